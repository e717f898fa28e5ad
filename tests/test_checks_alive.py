"""The two checkers of notebook 04's "keeping latents alive" exercises (the AuxK loss, dead-latent
resampling): each passes the notebook's solution, agrees with the package's own implementation,
and fails realistic wrong answers with the hint that names the mistake."""

import types

import pytest
import torch
import torch.nn.functional as F

import sae_minimal as sm
from sae_minimal.course import checks
from sae_minimal.resampling import resample_dead_latents
from sae_minimal.topk import auxk_loss as library_auxk_loss


# --- the notebook's solutions (solutions/04_saes_on_gpt2.ipynb), with switches for wrong answers ---
def auxk(x, x_hat, pre, dead, W_dec, k_aux, *, detach=True, only_dead=True, relu=True,
         normalise=True, scaled=True, batch_sum=False, detach_pre=False):
    """Written another way than the checker's reference: a dense code [B, d_sae], then a matmul."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    residual = x - x_hat
    target = residual.detach() if detach else residual
    candidates = torch.where(dead, pre, torch.full_like(pre, -torch.inf)) if only_dead else pre
    top = candidates.topk(min(k_aux, n_dead) if only_dead else k_aux, dim=-1)
    picked = top.values.clamp(min=0) if relu else top.values
    code = torch.zeros_like(pre).scatter(-1, top.indices, picked.detach() if detach_pre else picked)
    sq = ((code @ W_dec) - target).square().sum(dim=1)
    loss = sq.sum() if batch_sum else sq.mean()
    if normalise:
        loss = loss / target.var(dim=0, unbiased=False).sum()
    return loss * (min(1.0, n_dead / k_aux) if scaled else 1.0)


def resample(W_enc, W_dec, b_enc, b_dec, x, squared_error, dead, generator=None, *, power=2,
             centre=True, factor=0.2, zero_bias=True, argmax=False, touch_alive=False,
             replacement=True):
    W_enc, W_dec, b_enc = W_enc.clone(), W_dec.clone(), b_enc.clone()
    n_dead = int(dead.sum())
    if n_dead == 0:
        return W_enc, W_dec, b_enc
    weights = squared_error ** power
    drawn = (weights.argmax().repeat(n_dead) if argmax else
             torch.multinomial(weights, n_dead, replacement=replacement, generator=generator))
    v = F.normalize(x[drawn] - (b_dec if centre else 0), dim=-1)
    scale = factor * W_enc[:, ~dead].norm(dim=0).mean()
    W_dec[dead] = v
    W_enc[:, dead] = scale * v.T
    if zero_bias:
        b_enc[dead] = 0.0
    if touch_alive:
        b_enc[~dead] += 1.0
    return W_enc, W_dec, b_enc


def fails_with(checker, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        checker(fn)


def test_auxk_checker_passes_the_solution_and_names_each_mistake(capsys):
    checks.check_auxk_loss(auxk)
    assert capsys.readouterr().out.startswith("PASSED check_auxk_loss")
    wrong = {"only_dead": "of \\*all\\* latents", "relu": "must be ReLU'd",
             "normalise": "without dividing by Var", "detach": "gradient reaches x_hat",
             "scaled": "scale the loss by",
             "detach_pre": "carries no gradient|no gradient reaches the dead"}
    for switch, hint in wrong.items():
        fails_with(checks.check_auxk_loss, lambda *a, s=switch: auxk(*a, **{s: False if s in (
            "only_dead", "relu", "normalise", "detach", "scaled") else True}), hint)
    fails_with(checks.check_auxk_loss, lambda *a: auxk(*a, batch_sum=True), "summed over the batch")

    def denominator(kind):                                    # Var(e) written three wrong ways
        def fn(x, x_hat, pre, dead, W_dec, k_aux):
            e = (x - x_hat).detach()
            wrong = {"uncentred": e.square().sum(1).mean(), "elements": e.var(), "unbiased": e.var(0).sum()}[kind]
            return auxk(x, x_hat, pre, dead, W_dec, k_aux) * e.var(0, unbiased=False).sum() / wrong
        return fn
    fails_with(checks.check_auxk_loss, denominator("uncentred"), "subtracts the batch mean")
    fails_with(checks.check_auxk_loss, denominator("elements"), "variance of all B")
    fails_with(checks.check_auxk_loss, denominator("unbiased"), "divides by B - 1")
    fails_with(checks.check_auxk_loss, lambda x, h, p, dead, W, k: auxk(x, h, p, dead, W, k, scaled=False)
               * int(dead.sum()) / k, "cap it at")

    def targets_x(x, x_hat, pre, dead, W_dec, k_aux):        # ê reconstructs x, not e
        e = (x - x_hat).detach()
        code = torch.zeros_like(pre)
        top = pre.masked_fill(~dead, -1e9).topk(min(k_aux, int(dead.sum())), dim=-1)
        e_hat = code.scatter(-1, top.indices, top.values.relu()) @ W_dec
        return min(1.0, int(dead.sum()) / k_aux) * (x - e_hat).square().sum(1).mean() / e.var(0, unbiased=False).sum()
    fails_with(checks.check_auxk_loss, targets_x, "not x itself")

    def compacted(x, x_hat, pre, dead, W_dec, k_aux):       # indices into pre[:, dead], unmapped
        e = (x - x_hat).detach()
        values, indices = pre[:, dead].topk(min(k_aux, int(dead.sum())), dim=-1)
        e_hat = torch.einsum("bk,bkd->bd", values.relu(), W_dec[indices])
        return min(1.0, int(dead.sum()) / k_aux) * (e - e_hat).square().sum(1).mean() / e.var(0, unbiased=False).sum()
    fails_with(checks.check_auxk_loss, compacted, "fetched the wrong")
    fails_with(checks.check_auxk_loss, lambda *a: auxk(*a).item(), "0-d tensor")
    fails_with(checks.check_auxk_loss, lambda *a: 2 * auxk(*a), "expected")


def test_the_checkers_auxk_is_the_packages_without_alpha_and_var_x():
    """sm.topk.auxk_loss = α · Var(x) · (what the learner writes): the exercise is the package's."""
    for n_dead in (10, 2, 0):
        x, x_hat, pre, dead, W_dec = checks._auxk_case(3, n_dead=n_dead)
        # an SAE whose encoder plays no part in the value (pre is given; it only routes gradients)
        sae = types.SimpleNamespace(dead_mask=lambda dead=dead: dead, W_dec=W_dec, W_enc=W_dec.T,
                                    b_enc=None, b_dec=None, apply_b_dec_to_input=False)
        alpha = 1 / 32
        var_x = (x - x.mean(0)).pow(2).sum(-1).mean()
        library = library_auxk_loss(sae, x, x_hat, pre, 4, alpha)
        assert float(library) == pytest.approx(float(alpha * var_x * auxk(x, x_hat, pre, dead, W_dec, 4)),
                                               rel=1e-5, abs=1e-9)
        assert float(checks._auxk_reference(x, x_hat, pre, dead, W_dec, 4)) == pytest.approx(
            float(auxk(x, x_hat, pre, dead, W_dec, 4)), rel=1e-6, abs=1e-9)


def test_resample_checker_passes_the_solution_and_names_each_mistake(capsys):
    checks.check_resample_dead(resample)
    assert capsys.readouterr().out.startswith("PASSED check_resample_dead")
    C = checks.check_resample_dead
    fails_with(C, lambda *a: resample(*a, power=1), "∝ the squared error itself")
    fails_with(C, lambda *a: resample(*a, power=0), "nearly\\) uniformly")
    fails_with(C, lambda *a: resample(*a, centre=False), "subtract b_dec first")
    fails_with(C, lambda *a: resample(*a, factor=1.0), "without the factor 0.2")
    fails_with(C, lambda *a: resample(*a, zero_bias=False), "b_enc of the resampled latents to 0")
    fails_with(C, lambda *a: resample(*a, argmax=True), "same input")
    fails_with(C, lambda *a: resample(*a, replacement=False), "with replacement")
    fails_with(C, lambda *a: resample(*a, touch_alive=True), "alive latents changed")
    fails_with(C, lambda *a: resample(*a)[:2], "as a tuple")

    def untransposed(W_enc, W_dec, b_enc, b_dec, x, squared_error, dead, generator=None):
        W_enc = W_enc.clone()
        v = F.normalize(x[:int(dead.sum())] - b_dec, dim=-1)
        W_enc[:, dead] = v                                    # [n_dead, d_in] into [d_in, n_dead]
        return W_enc, W_dec, b_enc
    fails_with(C, untransposed, "W_enc\\[:, dead\\] = scale \\* v.T")
    fails_with(C, lambda W_enc, W_dec, b_enc, *a: (W_enc, W_dec, b_enc), "did not change")


def test_the_resampling_exercise_is_what_the_package_does():
    """Same draws, same writes: resample_dead_latents on an SAE equals the exercise's solution fed
    that SAE's squared errors (Adam's state aside, which the exercise leaves out)."""
    sae = sm.TopKSAE(16, 64, k=4, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=gen) + 1.0
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64, generator=gen)[:20]] = True
    with torch.no_grad():
        sq = (x - sae.decode(sae.encode(x))).pow(2).sum(-1)
        mine = resample(sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, x, sq.double(), dead,
                        torch.Generator().manual_seed(5))
    resample_dead_latents(sae, x, dead, generator=torch.Generator().manual_seed(5))
    for got, want in zip(mine, (sae.W_enc, sae.W_dec, sae.b_enc)):
        torch.testing.assert_close(got.float(), want.detach(), rtol=1e-5, atol=1e-6)
