"""Each checker passes the reference solution and fails realistic wrong solutions with the right hint."""

import math

import pytest
import torch

from sae_minimal.course import checks
from sae_minimal.topk import topk_relu


def fails_with(check, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        check(fn)


# --- Exercise 1 ---
def test_overcomplete(capsys):
    checks.check_overcomplete(lambda d_sae, d_in, l0: (d_sae / d_in, l0 / d_sae))
    assert capsys.readouterr().out.startswith("PASSED check_overcomplete")
    fails_with(checks.check_overcomplete, lambda s, i, l: (i / s, l / s), "divided the wrong way")
    fails_with(checks.check_overcomplete, lambda s, i, l: (s / i, l / i), "L0 / d_sae")
    fails_with(checks.check_overcomplete, lambda s, i, l: (s // i, l / s), "integer division")
    fails_with(checks.check_overcomplete, lambda s, i, l: (s / i, 100 * l / s), "percentage")

    def stub(*a):
        raise NotImplementedError()
    fails_with(checks.check_overcomplete, stub, "NotImplementedError")


# --- Exercise 3 ---
def test_soft_threshold():
    checks.check_soft_threshold(lambda z, lam: torch.sign(z) * torch.clamp(z.abs() - lam, min=0))
    fails_with(checks.check_soft_threshold, lambda z, lam: z - lam * torch.sign(z), "did you forget to clip at 0")
    fails_with(checks.check_soft_threshold, lambda z, lam: z - lam, "did you forget to clip at 0")
    fails_with(checks.check_soft_threshold, lambda z, lam: torch.clamp(z - lam, min=0), "only handles positive z")
    fails_with(checks.check_soft_threshold, lambda z, lam: z * (z.abs() > lam), "hard thresholding")
    fails_with(checks.check_soft_threshold, lambda z, lam: torch.sign(z) * torch.clamp(z.abs() - lam / 2, min=0),
               "must map to 0|shrink by|towards 0")


# --- TopK activation ---
def test_topk_activation():
    checks.check_topk_activation(topk_relu)
    checks.check_topk_activation(lambda p, k: topk_relu(p.relu(), k))  # ReLU first is equivalent
    fails_with(checks.check_topk_activation, lambda p, k: p.topk(k, dim=-1).values, "Scatter them back")
    fails_with(checks.check_topk_activation,
               lambda p, k: torch.zeros_like(p).scatter_(-1, p.topk(k, -1).indices, p.topk(k, -1).values),
               "apply ReLU")
    fails_with(checks.check_topk_activation,
               lambda p, k: torch.zeros_like(p).scatter_(-1, p.abs().topk(k, -1).indices,
                                                         p.gather(-1, p.abs().topk(k, -1).indices)).relu(),
               "largest \\|value\\|")
    fails_with(checks.check_topk_activation,
               lambda p, k: torch.zeros_like(p).scatter_(0, p.topk(min(k, p.shape[0]), 0).indices,
                                                         p.topk(min(k, p.shape[0]), 0).values).relu(),
               "per row")


# --- Exercise 4 ---
def _topk_grads(x, W_enc, b_enc, W_dec, b_dec, k, *, mask=True, two=2.0, mean=True):
    pre = x @ W_enc + b_enc
    z = topk_relu(pre, k)
    B = x.shape[0] if mean else 1
    g_xhat = two * (z @ W_dec + b_dec - x) / B
    g_z = g_xhat @ W_dec.T
    g_pre = g_z * (z > 0) if mask else g_z
    return {"W_enc": x.T @ g_pre, "b_enc": g_pre.sum(0), "W_dec": z.T @ g_xhat, "b_dec": g_xhat.sum(0)}


def test_topk_backward():
    checks.check_topk_backward(_topk_grads)
    fails_with(checks.check_topk_backward, lambda *a: _topk_grads(*a, mask=False), "straight-through estimator")
    fails_with(checks.check_topk_backward, lambda *a: _topk_grads(*a, two=1.0), "factor 2")
    fails_with(checks.check_topk_backward, lambda *a: _topk_grads(*a, mean=False), "1/B")
    fails_with(checks.check_topk_backward, lambda *a: {"W_enc": 0}, "keys")
    fails_with(checks.check_topk_backward,
               lambda x, We, be, Wd, bd, k: _topk_grads(x, We, be, Wd, 0 * bd, k), "left out b_dec")
    fails_with(checks.check_topk_backward,
               lambda x, We, be, Wd, bd, k: _topk_grads(x, We, 0 * be, Wd, bd, k), "left out b_enc")
    # float64 arithmetic is not a mistake: the values are checked, not the dtype
    checks.check_topk_backward(lambda *a: {key: g.double() for key, g in _topk_grads(*a).items()})


# --- Exercise 5 ---
def test_welch_bound():
    def ref(d, eps):
        return math.inf if d * eps**2 >= 1 else math.floor(d * (1 - eps**2) / (1 - d * eps**2))
    checks.check_welch_bound(ref)
    fails_with(checks.check_welch_bound, lambda d, e: d * (1 - e**2) / (1 - d * e**2), "return math.inf|round down")
    fails_with(checks.check_welch_bound,
               lambda d, e: math.inf if d * e**2 >= 1 else d * (1 - e**2) / (1 - d * e**2), "round down")
    # ε in place of ε², in the vacuity test and in the formula: both named
    fails_with(checks.check_welch_bound,
               lambda d, e: math.inf if d * e >= 1 else d * (1 - e) / (1 - d * e), "Did you test d·ε >= 1")
    fails_with(checks.check_welch_bound, lambda d, e: math.inf if d * e**2 >= 1 else (
        math.floor(d * (1 - e) / (1 - d * e)) if d * e < 1 else ref(d, e)), "with ε in place of ε²")
    fails_with(checks.check_welch_bound, lambda d, e: math.inf, "bound is finite")


# --- JumpReLU ---
class _JR(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, t, eps, variant):
        ctx.save_for_backward(z, t)
        ctx.eps, ctx.variant = eps, variant
        return z * (z > t)

    @staticmethod
    def backward(ctx, g):
        z, t = ctx.saved_tensors
        k = ((z - t).abs() / ctx.eps < 0.5).float()
        gz = (z > t) * g if ctx.variant != "dz1" else g
        gt = -(t / ctx.eps) * k * g
        if ctx.variant == "no_theta_factor":
            gt = -(1 / ctx.eps) * k * g
        if ctx.variant == "sign":
            gt = -gt
        if ctx.variant == "no_grad_output":
            gt = -(t / ctx.eps) * k
        return gz, gt.sum(0), None, None


def test_jumprelu():
    checks.check_jumprelu(lambda z, t, e: _JR.apply(z, t, e, "ok"))
    fails_with(checks.check_jumprelu, lambda z, t, e: _JR.apply(z, t, e, "no_theta_factor"), "missing the factor θ")
    fails_with(checks.check_jumprelu, lambda z, t, e: _JR.apply(z, t, e, "sign"), "wrong sign")
    fails_with(checks.check_jumprelu, lambda z, t, e: _JR.apply(z, t, e, "dz1"), "d/dz is 1 everywhere")
    fails_with(checks.check_jumprelu, lambda z, t, e: z * (z > t), "d/dθ is zero|backward did not reach")
    fails_with(checks.check_jumprelu, lambda z, t, e: torch.relu(z - t), "unchanged")
    fails_with(checks.check_jumprelu, lambda z, t, e: _JR.apply(z, t, e, "no_grad_output"), "ignores grad_output")
    checks.check_jumprelu(lambda z, t, e: _JR.apply(z.double(), t.double(), e, "ok"))   # float64 passes


# --- Toy model loss ---
def test_toy_model_loss():
    def ref(W, b, x, imp):
        return (imp * (x - torch.relu(x @ W.T @ W + b)) ** 2).sum(-1).mean()
    checks.check_toy_model_loss(ref)
    fails_with(checks.check_toy_model_loss, lambda W, b, x, imp: (imp * (x - (x @ W.T @ W + b)) ** 2).sum(-1).mean(),
               "forgot the ReLU")
    fails_with(checks.check_toy_model_loss, lambda W, b, x, imp: ((x - torch.relu(x @ W.T @ W + b)) ** 2).sum(-1).mean(),
               "importance")
    fails_with(checks.check_toy_model_loss, lambda W, b, x, imp: (imp * (x - torch.relu(x @ W.T @ W + b)) ** 2).sum(),
               "summed over the batch")
    fails_with(checks.check_toy_model_loss, lambda W, b, x, imp: (imp * (x - torch.relu(x @ W.T @ W + b)) ** 2).mean(),
               "averaged over features")
    fails_with(checks.check_toy_model_loss, lambda W, b, x, imp: (imp * (x - torch.relu(x @ W.T @ W)) ** 2).sum(-1).mean(),
               "the bias b is missing")
    fails_with(checks.check_toy_model_loss,
               lambda W, b, x, imp: (imp * (x - (torch.relu(x @ W.T @ W) + b)) ** 2).sum(-1).mean(), "after the ReLU")


# --- Recovery score ---
def test_recovery_score():
    def ref(D, W, th):
        cos = torch.nn.functional.normalize(D, dim=-1) @ torch.nn.functional.normalize(W, dim=-1).T
        best = cos.max(1).values
        return float(best.mean()), float((best > th).float().mean())
    checks.check_recovery_score(ref)

    def abs_cos(D, W, th):
        cos = (torch.nn.functional.normalize(D, dim=-1) @ torch.nn.functional.normalize(W, dim=-1).T).abs()
        best = cos.max(1).values
        return float(best.mean()), float((best > th).float().mean())
    fails_with(checks.check_recovery_score, abs_cos, "\\|cos\\|")

    def wrong_axis(D, W, th):
        cos = torch.nn.functional.normalize(D, dim=-1) @ torch.nn.functional.normalize(W, dim=-1).T
        best = cos.max(0).values
        return float(best.mean()), float((best > th).float().mean())
    fails_with(checks.check_recovery_score, wrong_axis, "averaged over the SAE's latents")

    def dots(D, W, th):
        best = (D @ W.T).max(1).values
        return float(best.mean()), float((best > th).float().mean())
    fails_with(checks.check_recovery_score, dots, "not cosines")


# --- Notebook 05: ablation ---
def test_ablate_latent():
    def good(x, sae, i):
        return x - sae.encode(x)[:, i, None] * sae.W_dec[i]

    def via_error(x, sae, i):  # the other correct route: decode with the latent zeroed, add the error back
        f = sae.encode(x)
        g = f.clone()
        g[:, i] = 0
        return sae.decode(g) + (x - sae.decode(f))

    checks.check_ablate_latent(good)
    checks.check_ablate_latent(via_error)

    def no_error(x, sae, i):
        f = sae.encode(x)
        f[:, i] = 0
        return sae.decode(f)

    def in_place(x, sae, i):
        x -= sae.encode(x)[:, i, None] * sae.W_dec[i]
        return x

    fails_with(checks.check_ablate_latent, no_error, "error term")
    fails_with(checks.check_ablate_latent, lambda x, sae, i: x - sae.W_dec[i], "scale it")
    fails_with(checks.check_ablate_latent, lambda x, sae, i: x - sae.encode(x)[:, i, None] * sae.W_enc[:, i], "decoder")
    fails_with(checks.check_ablate_latent, in_place, "in place")


def test_ablate_latent_keeps_the_decoder_row_norm():
    """The checker's decoder rows are not unit norm (as in SAEs loaded from SAELens), so
    normalising d_i changes the answer and is named."""
    from sae_minimal.lm.steering import ablate_latent
    checks.check_ablate_latent(ablate_latent)   # the package's own

    def normalised(x, sae, i):
        d = sae.W_dec[i]
        return x - sae.encode(x)[:, i, None] * d / d.norm()
    fails_with(checks.check_ablate_latent, normalised, "divided by the decoder row's norm")


# --- Notebook 06: Matryoshka loss ---
def _prefix_mse(x, z, W, b, m, *, start=0):
    """Written out here, independently of the checker: ||x - (z[:, start:m] @ W[start:m] + b)||², batch mean."""
    return (z[:, start:m] @ W[start:m] + b - x).pow(2).sum(-1).mean()


def test_matryoshka_loss():
    right = lambda x, z, W, b, s: sum(_prefix_mse(x, z, W, b, m) for m in s)  # noqa: E731
    checks.check_matryoshka_loss(right)
    fails_with(checks.check_matryoshka_loss, lambda x, z, W, b, s: _prefix_mse(x, z, W, b, s[-1]), "only counted")
    fails_with(checks.check_matryoshka_loss,
               lambda x, z, W, b, s: torch.stack([_prefix_mse(x, z, W, b, m) for m in s]).mean(), "sum them")
    fails_with(checks.check_matryoshka_loss,   # the *last* m latents instead of the first m
               lambda x, z, W, b, s: sum(_prefix_mse(x, z, W, b, z.shape[1], start=z.shape[1] - m) for m in s),
               "first")
    fails_with(checks.check_matryoshka_loss,
               lambda x, z, W, b, s: sum(_prefix_mse(x, z, W, b * 0, m) for m in s), "decoder bias")
    fails_with(checks.check_matryoshka_loss,   # mean over d_in as well as over the batch
               lambda x, z, W, b, s: sum((z[:, :m] @ W[:m] + b - x).pow(2).mean() for m in s), "d_in")


def test_matryoshka_loss_must_backpropagate():
    """The right number computed without a graph (or with part of it cut) trains nothing."""
    right = lambda x, z, W, b, s: sum(_prefix_mse(x, z, W, b, m) for m in s)  # noqa: E731

    def no_grad(x, z, W, b, s):
        with torch.no_grad():
            return right(x, z, W, b, s)
    fails_with(checks.check_matryoshka_loss, no_grad, "carries no gradient.*torch.no_grad")
    fails_with(checks.check_matryoshka_loss, lambda x, z, W, b, s: right(x, z, W, b, s).detach(),
               "carries no gradient")
    fails_with(checks.check_matryoshka_loss, lambda x, z, W, b, s: right(x, z, W.detach(), b, s),
               "gradient with respect to W_dec is missing")
    fails_with(checks.check_matryoshka_loss, lambda x, z, W, b, s: right(x, z.detach(), W, b, s),
               "gradient with respect to latents is missing")
    fails_with(checks.check_matryoshka_loss,   # only the first prefix term is cut off
               lambda x, z, W, b, s: (_prefix_mse(x, z, W.detach(), b, s[0])
                                      + sum(_prefix_mse(x, z, W, b, m) for m in s[1:])),
               "gradient with respect to W_dec is wrong")
    fails_with(checks.check_matryoshka_loss,   # rebuilt from the number: no graph either
               lambda x, z, W, b, s: torch.tensor(right(x, z, W, b, s).item()), "carries no gradient")


def test_matryoshka_reference_matches_the_library():
    """The checker's reference is the library's loss: MatryoshkaSAE's prefix MSE terms summed."""
    import sae_minimal as sm
    from sae_minimal.course.checks import _matryoshka_reference as ref

    sae = sm.MatryoshkaTopKSAE(6, 24, k=4, prefix_sizes=[3, 8]).eval()
    x = torch.randn(16, 6)
    out = sae(x)
    mse_terms = sum(v for k, v in out.losses.items() if k.startswith("mse"))
    assert torch.allclose(mse_terms, ref(x, out.latents, sae.W_dec, sae.b_dec, [3, 8, 24]), rtol=1e-5)
