"""Gradients: TopK sends gradient only where it selected; autograd-checkable pieces pass gradcheck."""

import pytest
import torch

import sae_minimal as sm
from sae_minimal.batchtopk import batch_topk_relu
from sae_minimal.topk import topk_relu


def test_topk_gradient_only_reaches_selected_latents():
    pre = torch.randn(6, 20, requires_grad=True)
    z = topk_relu(pre, 3)
    (z * torch.randn_like(z)).sum().backward()
    selected = z != 0
    assert (pre.grad[~selected] == 0).all()
    assert (pre.grad[selected] != 0).all()


def test_topk_sae_encoder_rows_of_unselected_latents_get_no_gradient():
    sae = sm.TopKSAE(8, 32, k=2)
    x = torch.randn(1, 8)
    out = sae(x)
    out.losses["mse"].backward()
    chosen = out.latents[0] != 0
    assert (sae.W_enc.grad[:, ~chosen] == 0).all()
    assert (sae.b_enc.grad[~chosen] == 0).all()
    assert (sae.W_dec.grad[~chosen] == 0).all()


@pytest.mark.parametrize("fn", [lambda p: topk_relu(p, 3), lambda p: batch_topk_relu(p, 2)],
                         ids=["topk", "batchtopk"])
def test_gradcheck_topk_fixed_selection(fn):
    # Away from ties the selection is locally constant, so the finite-difference check applies.
    pre = (torch.arange(40, dtype=torch.float64).reshape(4, 10) * 0.37 % 3 - 1).requires_grad_()
    assert torch.autograd.gradcheck(fn, (pre,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cls", [sm.ReLUSAE, sm.GatedSAE], ids=["relu", "gated"])
def test_gradcheck_relu_and_gated_paths(cls):
    """Autograd's gradient of the whole training loss, for every parameter, against finite differences."""
    sae = cls(4, 6, dtype=torch.float64, seed=1).train()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=torch.float64))
    x = torch.randn(5, 4, dtype=torch.float64)
    names = [name for name, _ in sae.named_parameters()]

    def loss(*params, terms=("mse", "l1")):
        out = torch.func.functional_call(sae, dict(zip(names, params)), (x,))
        return sum(out.losses[t] for t in terms)

    params = tuple(p.detach().clone().requires_grad_() for p in sae.parameters())
    assert torch.autograd.gradcheck(loss, params)
    if cls is sm.GatedSAE:  # the auxiliary loss trains the gate path through a *frozen* decoder
        grads = torch.autograd.grad(loss(*params, terms=("aux",)), params, allow_unused=True)
        assert grads[names.index("W_dec")] is None      # no path from the aux loss to W_dec
        # b_dec is frozen in the decoder but not in the encoder's input x - b_dec: not checkable here
        live = [i for i, n in enumerate(names) if n not in ("W_dec", "b_dec")]

        def aux(*live_params):
            full = list(params)
            for i, p in zip(live, live_params):
                full[i] = p
            return loss(*full, terms=("aux",))
        assert torch.autograd.gradcheck(aux, tuple(params[i] for i in live))


def test_jumprelu_input_gradient_is_exact():
    from sae_minimal.jumprelu import jumprelu
    theta = torch.full((6,), 0.5, dtype=torch.float64)
    z = torch.tensor([[-1.0, 0.1, 0.7, 1.5, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: jumprelu(z, theta, 0.01), (z,))


def test_topk_sae_sparse_and_dense_paths_agree():
    x = torch.randn(32, 16)
    a = sm.TopKSAE(16, 512, k=4, seed=0)
    b = sm.TopKSAE(16, 512, k=4, seed=0)
    a.decode_sparsely, b.decode_sparsely = True, False
    assert a.uses_sparse_decode() and not b.uses_sparse_decode()
    oa, ob = a(x), b(x)
    torch.testing.assert_close(oa.x_hat, ob.x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(oa.latents, ob.latents)
    oa.loss.backward()
    ob.loss.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(a, name).grad, getattr(b, name).grad, rtol=1e-4, atol=1e-5, msg=name)
    assert sm.TopKSAE(16, 512, k=4).uses_sparse_decode() and not sm.TopKSAE(16, 32, k=4).uses_sparse_decode()


@pytest.mark.parametrize("dead", [False, True], ids=["auxk-idle", "auxk-active"])
def test_topk_sparse_encoder_backward_matches_dense(dead):
    x = torch.randn(64, 16, dtype=torch.float64)
    saes = [sm.TopKSAE(16, 512, k=4, k_aux=8, dead_window=10, seed=0, dtype=torch.float64) for _ in range(2)]
    saes[0].decode_sparsely, saes[1].decode_sparsely = True, False
    for sae in saes:
        g = torch.Generator().manual_seed(1)   # the same non-zero biases for both SAEs
        with torch.no_grad():
            sae.b_dec.copy_(torch.randn(16, generator=g, dtype=torch.float64))
            sae.b_enc.copy_(0.1 * torch.randn(512, generator=g, dtype=torch.float64))
        sae.train()
        if dead:
            sae.tokens_since_fired[:256] = 100
        sae(x).loss.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(saes[0], name).grad, getattr(saes[1], name).grad, rtol=1e-9, atol=1e-10,
                                   msg=name)
