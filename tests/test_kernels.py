"""Each kernel in sae_minimal.kernels equals the plain formula its docstring states, forward and backward
(float64, so that "equal" means equal up to rounding, not up to float32 noise)."""

import pytest
import torch

from sae_minimal import kernels
from sae_minimal.kernels import (SparseCode, batch_topk_entries, code_t_matmul, decode_code, encoder_pre_acts,
                                 jumprelu_l0, pre_entries, sparse_decode, sparse_encode, sparse_prefix_decode, topk_entries)

f64 = dict(dtype=torch.float64)


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def assert_all_close(a, b):
    for i, (u, v) in enumerate(zip(a, b)):
        if u is None or v is None:
            assert u is None and v is None or (u if u is not None else v).abs().sum() == 0, i
        else:
            torch.testing.assert_close(u, v, msg=f"gradient {i}")


def test_encoder_pre_acts_equals_the_textbook_formula_and_its_gradients():
    x, W = torch.randn(7, 5, **f64), torch.randn(5, 11, **f64, requires_grad=True)
    b_enc, b_dec = torch.randn(11, **f64, requires_grad=True), torch.randn(5, **f64, requires_grad=True)
    plain = (x - b_dec) @ W + b_enc
    fast = encoder_pre_acts(x, W, b_enc, b_dec)
    torch.testing.assert_close(fast, plain)
    g = torch.randn_like(plain)
    assert_all_close(grads((plain * g).sum(), (W, b_enc, b_dec)), grads((fast * g).sum(), (W, b_enc, b_dec)))


def test_encoder_pre_acts_without_biases():
    x, W, b = torch.randn(3, 4, **f64), torch.randn(4, 6, **f64), torch.randn(4, **f64)
    torch.testing.assert_close(encoder_pre_acts(x, W, None, None), x @ W)
    torch.testing.assert_close(encoder_pre_acts(x, W, None, b), (x - b) @ W)


@pytest.mark.parametrize("biases", [True, False], ids=["biases", "no-biases"])
def test_pre_entries_equals_the_gathered_pre_acts_and_their_gradients(biases):
    x = torch.randn(7, 5, **f64, requires_grad=True)
    W = torch.randn(5, 11, **f64, requires_grad=True)
    b_enc = torch.randn(11, **f64, requires_grad=True) if biases else None
    b_dec = torch.randn(5, **f64, requires_grad=True) if biases else None
    rows = torch.tensor([0, 0, 3, 6, 6, 6])
    cols = torch.tensor([2, 9, 2, 0, 0, 10])                  # a repeated entry adds up
    plain = encoder_pre_acts(x, W, b_enc, b_dec)[rows, cols]
    fast = pre_entries(encoder_pre_acts(x, W, b_enc, b_dec), rows, cols, x, W, b_enc, b_dec)
    torch.testing.assert_close(fast, plain)
    g = torch.randn_like(plain)
    ts = [t for t in (x, W, b_enc, b_dec) if t is not None]
    assert_all_close(grads((plain * g).sum(), ts), grads((fast * g).sum(), ts))


# --- a random sparse code, as the encoder produces it ----------------------------------------------
def random_code(B=16, d_sae=200, density=0.05, seed=0, zeros=False):
    """A SparseCode (rows sorted, ascending latents within a row, some rows empty) and its dense Z."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, d_sae, generator=g) < density
    mask[3] = False                                          # an empty row
    rows, indices = mask.nonzero(as_tuple=True)
    values = torch.randn(len(rows), generator=g, **f64)
    if zeros:
        values[::3] = 0.0                                    # entries of value 0 (a JumpReLU window)
    counts = torch.bincount(rows, minlength=B)
    code = SparseCode(values.requires_grad_(), indices, rows, counts.cumsum(0) - counts)
    dense = torch.zeros(B, d_sae, **f64).index_put((rows, indices), code.values)
    return code, dense


def test_code_t_matmul_equals_the_dense_product():
    code, Z = random_code()
    source = torch.randn(16, 9, **f64)
    out = code_t_matmul(code.indices, code.rows, code.values.detach(), source, 200)
    torch.testing.assert_close(out, Z.detach().T @ source)
    # repeated (row, latent) pairs add up, as in the plain index_put(accumulate=True)
    rows, idx = torch.tensor([0, 0, 2]), torch.tensor([5, 5, 1])
    w = torch.tensor([1.0, 2.0, 3.0], **f64)
    plain = torch.zeros(3, 7, **f64).index_put((rows, idx), w, accumulate=True).T @ source[:3]
    torch.testing.assert_close(code_t_matmul(idx, rows, w, source[:3], 7), plain)


@pytest.mark.parametrize("crossover", [1.0, 0.0], ids=["dot-per-entry", "dense-product"])
@pytest.mark.parametrize("zeros", [False, True], ids=["values", "some-zero-values"])
def test_sparse_decode_of_a_code_equals_dense_forward_and_gradients(zeros, crossover, monkeypatch):
    """Each entry's gradient comes from its own dot product, or (many entries) from one dense product."""
    monkeypatch.setitem(kernels.SPARSE_MAX_DENSITY, "cpu", crossover)
    code, Z = random_code(zeros=zeros)
    W_dec = torch.randn(200, 12, **f64, requires_grad=True)
    b_dec = torch.randn(12, **f64, requires_grad=True)
    dense, sparse = Z @ W_dec + b_dec, decode_code(code, W_dec, b_dec)
    torch.testing.assert_close(sparse, dense)
    g = torch.randn_like(dense)
    ts = (W_dec, b_dec, code.values)
    fast = grads((sparse * g).sum(), ts)
    assert_all_close(grads((dense * g).sum(), ts), fast)
    gW = fast[0]
    used = torch.zeros(200, dtype=torch.bool)
    used[code.indices[code.values != 0]] = True
    assert (gW[~used] == 0).all() and (gW[used] != 0).any()   # only rows decoded with a value get gradient


@pytest.mark.parametrize("d_in, per_entry", [(256, True), (768, False)])
def test_decoder_backward_goes_entry_by_entry_up_to_a_density_that_falls_with_d_in(d_in, per_entry,
                                                                                   monkeypatch):
    """A code 6% dense (a JumpReLU-2048 and its STE window is ~4.4%) under the CPU crossover of
    8.8%: at d_in 256 each entry's gradient is its own dot product (2x faster there), at d_in 768
    one dense product is cheaper (kernels.DOT_D_IN)."""
    monkeypatch.setitem(kernels.SPARSE_MAX_DENSITY, "cpu", 0.088)
    op, calls = torch.ops.aten._embedding_bag_per_sample_weights_backward, []
    monkeypatch.setattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward",
                        lambda *a: calls.append(1) or op(*a))
    code, Z = random_code(B=64, d_sae=400, density=0.06)
    W_dec = torch.randn(400, d_in, **f64)
    g = torch.randn(64, d_in, **f64)
    fast = grads((decode_code(code, W_dec) * g).sum(), code.values)[0]
    torch.testing.assert_close(fast, (g @ W_dec.T)[code.rows, code.indices])
    assert bool(calls) == per_entry


def test_sparse_decode_of_k_per_row_equals_dense_forward_and_gradients():
    pre = torch.randn(16, 200, **f64)
    W_dec = torch.randn(200, 12, **f64, requires_grad=True)
    values, indices = pre.topk(7, dim=-1)
    values = values.relu().requires_grad_()
    dense = torch.zeros(16, 200, **f64).scatter(-1, indices, values) @ W_dec
    sparse = sparse_decode(indices, values, W_dec)
    torch.testing.assert_close(sparse, dense)
    g = torch.randn_like(dense)
    assert_all_close(grads((dense * g).sum(), (W_dec, values)), grads((sparse * g).sum(), (W_dec, values)))


def test_sparse_prefix_decode_equals_the_nested_dense_reconstructions():
    code, Z = random_code(d_sae=64, density=0.2)
    W_dec = torch.randn(64, 6, **f64, requires_grad=True)
    b_dec = torch.randn(6, **f64, requires_grad=True)
    sizes = [4, 16, 40]                                      # latents 40..63 play no part
    plain = torch.stack([Z[:, :m] @ W_dec[:m] + b_dec for m in sizes], 1)
    fast = sparse_prefix_decode(code, W_dec, b_dec, sizes)
    torch.testing.assert_close(fast, plain)
    g = torch.randn_like(plain)
    ts = (W_dec, b_dec, code.values)
    assert_all_close(grads((plain * g).sum(), ts), grads((fast * g).sum(), ts))


# --- which entries the TopK family keeps ------------------------------------------------------------
def plain_entries(dense_code: torch.Tensor) -> torch.Tensor:
    return dense_code.flatten().nonzero().squeeze(1)


def test_topk_entries_are_the_positive_picks_of_topk_in_order():
    pre = torch.randn(30, 50, **f64)
    pre[0] = -1.0 - torch.rand(50, **f64)                   # a row with no positive pick
    values, indices = pre.topk(6, dim=-1)
    plain = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    assert torch.equal(topk_entries(pre, 6), plain_entries(plain))


@pytest.mark.parametrize("shape", [(8, 40), (256, 2048)], ids=["small-direct", "large-sampled"])
def test_batch_topk_entries_equal_a_full_batch_topk(shape):
    pre = torch.randn(*shape, **f64) - 1.0
    k = 5
    acts = pre.relu().flatten()
    values, picked = acts.topk(k * shape[0])
    plain = torch.zeros_like(acts).scatter(0, picked, values)
    assert torch.equal(batch_topk_entries(pre, k), plain_entries(plain))


def test_batch_topk_entries_stay_exact_when_the_sampled_threshold_is_too_high(monkeypatch):
    pre = torch.randn(256, 2048, **f64)
    monkeypatch.setattr(kernels, "_sampled_threshold", lambda flat, n_keep, d_sae: flat.max())
    values, picked = pre.relu().flatten().topk(5 * 256)
    assert torch.equal(batch_topk_entries(pre, 5), picked[values > 0].sort().values)


# --- sparse_encode ----------------------------------------------------------------------------------
SELECTS = {
    "relu": lambda pre: pre > 0,
    "topk": lambda pre: topk_entries(pre, 4),
    "batchtopk": lambda pre: batch_topk_entries(pre, 4),
    "window": lambda pre: pre > torch.linspace(-0.5, 1.5, pre.shape[1], **f64),
}


@pytest.mark.parametrize("later", ["values-only", "pre-dense", "pre-sparse", "pre-sparse-only"])
@pytest.mark.parametrize("rule", list(SELECTS))
def test_sparse_encode_equals_pre_and_its_entries_forward_and_backward(rule, later):
    """Gradients reach x, W_enc, b_enc and b_dec from the entries' values and, when a later term used pre (AuxK),
    from pre too: a dense gradient, or one non-zero on few entries (then merged into the sparse product)."""
    torch.manual_seed(0)
    x = torch.randn(24, 6, **f64, requires_grad=True)
    W = torch.randn(6, 40, **f64, requires_grad=True)
    b_enc, b_dec = torch.randn(40, **f64, requires_grad=True), torch.randn(6, **f64, requires_grad=True)
    pre, code = sparse_encode(x, W, b_enc, b_dec, SELECTS[rule], max_density=0.5)
    plain_pre = (x - b_dec) @ W + b_enc
    keep = SELECTS[rule](plain_pre.detach())
    keep = keep.flatten().nonzero().squeeze(1) if keep.dtype == torch.bool else keep
    torch.testing.assert_close(pre, plain_pre)
    assert torch.equal(code.rows * 40 + code.indices, keep)
    torch.testing.assert_close(code.values, plain_pre.flatten()[keep])
    torch.testing.assert_close(code.offsets, torch.searchsorted(code.rows, torch.arange(24)))
    g = torch.randn(len(keep), **f64)
    g_pre = torch.randn_like(pre)
    if later.startswith("pre-sparse"):                       # few non-zeros, like AuxK's k_aux per row
        g_pre = g_pre * (torch.rand_like(g_pre) < 0.05)
    fast_loss, plain_loss = (code.values * g).sum(), (plain_pre.flatten()[keep] * g).sum()
    if later == "pre-sparse-only":                           # the code's values unused (a dense fallback)
        fast_loss, plain_loss = 0, 0
    if later != "values-only":
        fast_loss, plain_loss = fast_loss + (pre * g_pre).sum(), plain_loss + (plain_pre * g_pre).sum()
    ts = (x, W, b_enc, b_dec)
    assert_all_close(grads(plain_loss, ts), grads(fast_loss, ts))


def test_sparse_encode_leaves_a_code_denser_than_max_density_to_the_dense_path():
    x, W, b = torch.randn(8, 4, **f64), torch.randn(4, 20, **f64, requires_grad=True), torch.zeros(20, **f64)
    pre, code = sparse_encode(x, W, b, None, lambda p: p > -10.0, max_density=0.5)   # everything kept
    assert code is None
    g = torch.randn_like(pre)
    torch.testing.assert_close(grads((pre * g).sum(), (W,))[0], x.T @ g)
    assert sparse_encode(x, W, b, None, lambda p: p > 10.0, max_density=0.5)[1].values.numel() == 0


def test_sparse_encode_gradcheck():
    x = torch.randn(5, 4, **f64, requires_grad=True)
    W = torch.randn(4, 30, **f64, requires_grad=True)
    b = torch.randn(30, **f64, requires_grad=True)

    def f(x, W, b):
        pre, code = sparse_encode(x, W, b, None, lambda p: topk_entries(p, 3), 1.0)
        return code.values.sum() + pre.pow(2).sum()
    assert torch.autograd.gradcheck(f, (x, W, b))


# --- JumpReLU -----------------------------------------------------------------------------------------
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


def test_jumprelu_l0_on_the_window_entries_equals_the_dense_formula():
    """The sparse path applies jumprelu_l0 to the entries above θ - ε/2 only, with one threshold per entry
    (θ[indices]): outputs, per-row L0 and the gradients in z and θ equal the dense call's."""
    torch.manual_seed(1)
    eps = 0.6
    z = torch.randn(20, 15, **f64, requires_grad=True)
    theta = (0.3 + torch.rand(15, **f64)).requires_grad_()
    dense = jumprelu_l0(z, theta, eps)
    rows, idx = (z.detach() > theta.detach() - eps / 2).nonzero(as_tuple=True)
    f, fired = jumprelu_l0(z[rows, idx][:, None], theta[idx][:, None], eps)
    sparse_latents = torch.zeros(20, 15, **f64).index_put((rows, idx), f[:, 0])
    sparse_l0 = torch.zeros(20, **f64).index_add(0, rows, fired)
    torch.testing.assert_close(sparse_latents, dense.latents)
    torch.testing.assert_close(sparse_l0, dense.l0)
    g_out, g_l0 = torch.randn(20, 15, **f64), torch.randn(20, **f64)
    assert_all_close(grads((dense.latents * g_out).sum() + (dense.l0 * g_l0).sum(), (z, theta)),
                     grads((sparse_latents * g_out).sum() + (sparse_l0 * g_l0).sum(), (z, theta)))


# --- the crossover --------------------------------------------------------------------------------------
def test_sparse_max_density_measures_an_unknown_device_type_once(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "SPARSE_MAX_DENSITY", {})
    monkeypatch.setattr(kernels, "measure_sparse_crossover", lambda device: calls.append(device) or 0.07)
    assert kernels.sparse_max_density("cpu") == 0.07 and kernels.sparse_max_density("cpu") == 0.07
    assert len(calls) == 1


def test_measure_sparse_crossover_returns_a_density():
    crossover = kernels.measure_sparse_crossover("cpu", d_in=8, d_sae=256, batch=32, repeats=1)
    assert 0.0 <= crossover <= 0.5
    assert 0 < kernels.SPARSE_MAX_DENSITY["cpu"] < 1


def test_measure_sparse_crossover_counts_running_out_of_memory_as_a_loss(monkeypatch):
    """A sparse step that runs out of memory at a dense code (as two GPU runs measuring side by side
    did) ends the search at that density: no exception, a crossover below it."""
    batch, d_sae, decode = 32, 256, kernels.decode_code

    def decode_or_oom(code, W_dec, b_dec=None):
        if len(code.indices) > batch * d_sae / 64:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(code, W_dec, b_dec)

    monkeypatch.setattr(kernels, "decode_code", decode_or_oom)
    crossover = kernels.measure_sparse_crossover("cpu", d_in=8, d_sae=d_sae, batch=batch, repeats=1)
    assert 0.0 <= crossover < 1 / 32
