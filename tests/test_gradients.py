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


ALL = [(sm.ReLUSAE, {}), (sm.TopKSAE, {"k": 4}), (sm.BatchTopKSAE, {"k": 4}),
       (sm.JumpReLUSAE, {"bandwidth": 0.5}), (sm.GatedSAE, {}),
       (sm.MatryoshkaSAE, {"k": 4, "prefix_sizes": [8, 32]}), (sm.MatryoshkaTopKSAE, {"k": 4, "prefix_sizes": [8, 32]})]


def _pair(cls, kw, dead: bool):
    """Two identical float64 SAEs in training mode, one forced onto the sparse path, one onto the dense; non-zero
    biases; with ``dead``, half the latents count as dead (AuxK active)."""
    saes = [cls(16, 128, seed=0, dtype=torch.float64, **kw) for _ in range(2)]
    saes[0].sparse_path, saes[1].sparse_path = True, False
    for sae in saes:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in sae.named_parameters():
                if p.ndim == 1 and name != "log_threshold":
                    p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        sae.train()
        if dead:
            sae.tokens_since_fired[:64] = 10**9
    return saes


@pytest.mark.parametrize("dead", [False, True], ids=["auxk-idle", "auxk-active"])
@pytest.mark.parametrize("cls,kw", ALL, ids=[c.__name__ for c, _ in ALL])
def test_sparse_and_dense_paths_agree_for_every_variant(cls, kw, dead):
    """Loss terms, latents, the dead-latent counter, BatchTopK's threshold and every parameter's gradient."""
    x = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sparse, dense = _pair(cls, kw, dead)
    outs = []
    for sae in (sparse, dense):
        out = sae(x)
        out.loss.backward()
        outs.append(out)
    assert outs[0].losses.keys() == outs[1].losses.keys()
    for name in outs[0].losses:
        torch.testing.assert_close(outs[0].losses[name], outs[1].losses[name], msg=name)
    torch.testing.assert_close(outs[0].latents, outs[1].latents)
    torch.testing.assert_close(outs[0].x_hat, outs[1].x_hat)
    assert torch.equal(sparse.tokens_since_fired, dense.tokens_since_fired)
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for name, b in sparse.named_buffers():
        torch.testing.assert_close(b, dict(dense.named_buffers())[name], msg=name)
    with torch.no_grad():                                   # the sparse path really ran
        assert sparse.encode_flat(x).sparse is not None and dense.encode_flat(x).sparse is None


@pytest.mark.parametrize("cls,kw", ALL, ids=[c.__name__ for c, _ in ALL])
def test_encoder_gradient_reaches_only_latents_that_fired(cls, kw):
    """On the sparse path (AuxK idle) W_enc's and b_enc's gradients vanish for every latent that fired on no
    input of the batch; JumpReLU's threshold still gets its straight-through gradient from latents in the
    kernel's window that did not fire."""
    x = torch.randn(32, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sae = _pair(cls, kw, dead=False)[0]
    with torch.no_grad():                                   # fewer latents fire: some fire on no input
        getattr(sae, "b_gate", getattr(sae, "b_enc", None)).sub_(1.5)
    out = sae(x)
    out.loss.backward()
    fired = (out.latents != 0).any(0)
    assert fired.any() and (~fired).any()
    assert (sae.W_enc.grad[:, ~fired] == 0).all() and (sae.W_enc.grad[:, fired] != 0).any()
    assert (sae.W_dec.grad[~fired] == 0).all()
    if isinstance(sae, sm.JumpReLUSAE):
        with torch.no_grad():
            pre = sae.pre_acts(x)
            near = ((pre - sae.threshold).abs() < sae.bandwidth / 2).any(0)
        assert (near & ~fired).any()                          # latents in the window that never fired...
        assert (sae.log_threshold.grad[near & ~fired] != 0).all()    # ... whose θ still learns


def test_dense_code_takes_the_dense_path_by_itself():
    """sparse_path None: an untrained ReLU SAE fires about half its latents, denser than any crossover, so it
    runs dense; with its biases lowered until few latents fire, the same SAE runs sparse."""
    sae = sm.ReLUSAE(16, 512).train()
    x = torch.randn(64, 16)
    assert sae.encode_flat(x).sparse is None
    with torch.no_grad():
        sae.b_enc.fill_(-2.5)
    enc = sae.encode_flat(x)
    assert enc.sparse is not None
    assert enc.sparse.values.numel() <= sm.kernels.sparse_max_density("cpu") * x.shape[0] * 512


def test_jumprelu_with_a_wide_window_takes_the_dense_estimator():
    """Few latents fire but the kernel's window below θ holds most entries: the automatic choice runs the
    dense straight-through estimator (its encoder gradient still comes back sparse, from the few non-zero
    entries of the dense gradient) and equals the dense path."""
    x = torch.randn(64, 16, dtype=torch.float64)
    auto, dense = (sm.JumpReLUSAE(16, 512, bandwidth=50.0, init_threshold=3.0, dtype=torch.float64) for _ in "ab")
    dense.sparse_path = False
    assert auto.encode_flat(x).sparse is None
    for sae in (auto, dense):
        sae.train()
        sae(x).loss.backward()
    for (name, p), q in zip(auto.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_topk_sae_sparse_and_dense_paths_agree():
    x = torch.randn(32, 16)
    a = sm.TopKSAE(16, 512, k=4, seed=0)
    b = sm.TopKSAE(16, 512, k=4, seed=0)
    b.sparse_path = False
    oa, ob = a(x), b(x)
    assert sm.TopKSAE(16, 512, k=4).encode_flat(x).sparse is not None       # k / d_sae small: sparse
    assert sm.TopKSAE(16, 32, k=16).encode_flat(x).sparse is None           # half the latents: dense
    torch.testing.assert_close(oa.x_hat, ob.x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(oa.latents, ob.latents)
    oa.loss.backward()
    ob.loss.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(a, name).grad, getattr(b, name).grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("variant", ["JumpReLUSAE", "GatedSAE"])
def test_per_latent_parameters_get_the_same_gradient_every_time_on_two_threads(variant):
    """The same batch must give the same gradients, bit for bit: gathering a per-latent parameter per entry with
    p[indices] (JumpReLU's θ, Gated's biases) made its backward add the entries with atomics (CPU index_put_ with
    accumulate), in another order each run, so one seed trained different SAEs (04's JumpReLU rows changed in the
    3rd-4th digit between runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sae = getattr(sm, variant)(64, 256, seed=0).train()
        sae.sparse_path = True
        x = torch.randn(8192, 64, generator=torch.Generator().manual_seed(0)) * 2
        grads = []
        for _ in range(6):
            sae.zero_grad()
            sae(x).loss.backward()
            grads.append([p.grad.clone() for p in sae.parameters()])
    finally:
        torch.set_num_threads(threads)
    for i, (name, _) in enumerate(sae.named_parameters()):
        assert all(torch.equal(grads[0][i], g[i]) for g in grads[1:]), f"{name}'s gradient changed between runs"
