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


def test_gradcheck_relu_and_gated_paths():
    x = torch.randn(5, 4, dtype=torch.float64)
    for cls in (sm.ReLUSAE, sm.GatedSAE):
        sae = cls(4, 6, dtype=torch.float64)
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(0.1 * torch.randn_like(p))
        W = sae.W_dec.detach().clone().requires_grad_()

        def recon(W):
            return sae.encode(x) @ W + sae.b_dec
        assert torch.autograd.gradcheck(recon, (W,))


def test_jumprelu_input_gradient_is_exact():
    from sae_minimal.jumprelu import jumprelu
    theta = torch.full((6,), 0.5, dtype=torch.float64)
    z = torch.tensor([[-1.0, 0.1, 0.7, 1.5, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: jumprelu(z, theta, 0.01), (z,))
