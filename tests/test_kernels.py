"""Each kernel in sae_minimal.kernels equals the plain formula its docstring states, forward and backward."""

import pytest
import torch

from sae_minimal.kernels import _TopKEncode, encoder_pre_acts, jumprelu_l0, sparse_decode, topk_encode

f64 = dict(dtype=torch.float64)


def test_encoder_pre_acts_equals_the_textbook_formula_and_its_gradients():
    x, W = torch.randn(7, 5, **f64), torch.randn(5, 11, **f64, requires_grad=True)
    b_enc, b_dec = torch.randn(11, **f64, requires_grad=True), torch.randn(5, **f64, requires_grad=True)
    plain = (x - b_dec) @ W + b_enc
    fast = encoder_pre_acts(x, W, b_enc, b_dec)
    torch.testing.assert_close(fast, plain)
    g = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad((plain * g).sum(), (W, b_enc, b_dec)),
                    torch.autograd.grad((fast * g).sum(), (W, b_enc, b_dec))):
        torch.testing.assert_close(a, b)


def test_encoder_pre_acts_without_biases():
    x, W, b = torch.randn(3, 4, **f64), torch.randn(4, 6, **f64), torch.randn(4, **f64)
    torch.testing.assert_close(encoder_pre_acts(x, W, None, None), x @ W)
    torch.testing.assert_close(encoder_pre_acts(x, W, None, b), (x - b) @ W)


def test_sparse_decode_equals_dense_forward_and_gradients():
    torch.manual_seed(0)
    pre = torch.randn(16, 200)
    W_dec = torch.randn(200, 12, requires_grad=True)
    values, indices = pre.topk(7, dim=-1)
    values = values.relu().requires_grad_()
    dense = torch.zeros(16, 200).scatter(-1, indices, values) @ W_dec
    sparse = sparse_decode(indices, values, W_dec)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(dense)
    gW_dense, gv_dense = torch.autograd.grad((dense * g).sum(), (W_dec, values))
    gW_sparse, gv_sparse = torch.autograd.grad((sparse * g).sum(), (W_dec, values))
    torch.testing.assert_close(gW_sparse, gW_dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gv_sparse, gv_dense, rtol=1e-5, atol=1e-5)
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[indices.unique()] = False
    assert (gW_sparse[untouched] == 0).all()          # only selected rows receive gradient


@pytest.mark.parametrize("use_pre", [False, True], ids=["sparse-backward", "dense-backward"])
def test_topk_encode_equals_topk_of_the_pre_activations(use_pre):
    x = torch.randn(9, 6, **f64)
    W = torch.randn(6, 40, **f64, requires_grad=True)
    b_enc, b_dec = torch.randn(40, **f64, requires_grad=True), torch.randn(6, **f64, requires_grad=True)
    code = topk_encode(x, W, b_enc, b_dec, 4)
    pre = (x - b_dec) @ W + b_enc
    values, indices = pre.topk(4, dim=-1)
    torch.testing.assert_close(code.pre, pre)
    assert torch.equal(code.indices.sort(-1).values, indices.sort(-1).values)
    plain_code = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    fast_code = torch.zeros_like(pre).scatter(-1, code.indices, code.values)
    torch.testing.assert_close(fast_code, plain_code)
    g = torch.randn_like(pre)
    plain_loss = (plain_code * g).sum() + (pre.pow(2).sum() if use_pre else 0)
    fast_loss = (fast_code * g).sum() + (code.pre.pow(2).sum() if use_pre else 0)
    for a, b in zip(torch.autograd.grad(plain_loss, (W, b_enc, b_dec)),
                    torch.autograd.grad(fast_loss, (W, b_enc, b_dec))):
        torch.testing.assert_close(a, b)


def test_topk_encode_gradcheck():
    x = torch.randn(5, 4, **f64, requires_grad=True)
    W = torch.randn(4, 40, **f64, requires_grad=True)
    b = torch.randn(40, **f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, W, b: _TopKEncode.apply(x, W, b, 3)[0], (x, W, b))
    assert torch.autograd.gradcheck(
        lambda x, W, b: _TopKEncode.apply(x, W, b, 3)[0].sum() + _TopKEncode.apply(x, W, b, 3)[2].pow(2).sum(),
        (x, W, b))


def test_jumprelu_l0_forward_is_z_times_step_and_the_count():
    z = torch.randn(8, 10, **f64)
    theta = torch.rand(10, **f64)
    code = jumprelu_l0(z, theta, 0.5)
    torch.testing.assert_close(code.latents, z * (z > theta))
    torch.testing.assert_close(code.l0, (z > theta).sum(-1).to(z.dtype))


def test_jumprelu_l0_input_gradient_is_exact():
    theta = torch.full((6,), 0.5, **f64)
    z = torch.tensor([[-1.0, 0.1, 0.7, 1.5, 2.0, 3.0]], **f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: jumprelu_l0(z, theta, 0.01).latents, (z,))


def test_jumprelu_l0_threshold_gradients_equal_the_ste_formulas():
    """∂/∂θ_i = Σ_b [-(θ_i/ε)·K((z_bi-θ_i)/ε)·g_out_bi - (1/ε)·K((z_bi-θ_i)/ε)·g_l0_b], K = 1[|u| < 1/2]."""
    torch.manual_seed(0)
    eps = 0.4
    z = torch.randn(32, 12, **f64, requires_grad=True)
    theta = (0.2 + torch.rand(12, **f64)).requires_grad_()
    g_out, g_l0 = torch.randn(32, 12, **f64), torch.randn(32, **f64)
    code = jumprelu_l0(z, theta, eps)
    grad_z, grad_theta = torch.autograd.grad((code.latents * g_out).sum() + (code.l0 * g_l0).sum(), (z, theta))
    with torch.no_grad():
        K = ((z - theta).abs() / eps < 0.5).to(z.dtype)
        want = (-(theta / eps) * K * g_out - (1 / eps) * K * g_l0[:, None]).sum(0)
    assert K.sum() > 10                               # the kernel is active on enough entries to test
    torch.testing.assert_close(grad_theta, want)
    torch.testing.assert_close(grad_z, (z > theta) * g_out)
