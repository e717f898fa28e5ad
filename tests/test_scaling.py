"""sae_minimal.scaling: the fits recover known laws, the bootstrap keeps its pairing, useful
latents count duplicates once; and check_power_law_fit (notebook 07) explains each wrong fit."""

import math

import pytest
import torch

from sae_minimal import scaling
from sae_minimal.course import checks

N = 2.0 ** torch.arange(7, 14, dtype=torch.float64)      # 128 .. 8192 latents


def test_fit_power_law_recovers_known_law():
    L = scaling.power_law(N, 2.0, 0.3, 0.04)
    c, alpha = scaling.fit_power_law(N, L, L_inf=0.04)
    assert math.isclose(c, 2.0, rel_tol=1e-9) and math.isclose(alpha, 0.3, rel_tol=1e-9)
    # ignoring the floor flattens the line: the exponent comes out too small
    assert scaling.fit_power_law(N, L)[1] < 0.27


def test_saturating_fit_finds_the_floor_and_predicts_beyond_the_data():
    gen = torch.Generator().manual_seed(0)
    L = scaling.power_law(N, 1.5, 0.4, 0.05) * torch.exp(0.005 * torch.randn(len(N), generator=gen,
                                                                             dtype=torch.float64))
    fit = scaling.fit_saturating_power_law(N, L)
    assert abs(fit.alpha - 0.4) < 0.05 and abs(fit.L_inf - 0.05) < 0.01
    assert fit.rms_log_error < 0.01
    assert math.isclose(float(fit.predict(65536)), float(scaling.power_law(65536, 1.5, 0.4, 0.05)),
                        rel_tol=0.05)


def test_saturating_fit_is_least_squares_on_log_L_not_on_log_of_the_reducible_part():
    # FVUs like notebook 07's width sweep: the last points sit just above the floor, where a line
    # through ln(L - L_inf) lets them decide the exponent (it found alpha 1.18, rms 0.0082; the
    # least-squares optimum in ln L is alpha 1.11, rms 0.0068, scipy's least_squares agrees)
    widths = torch.tensor([256.0, 512, 1024, 2048, 4096], dtype=torch.float64)
    L = torch.tensor([0.1785, 0.1464, 0.1285, 0.1214, 0.1197], dtype=torch.float64)
    fit = scaling.fit_saturating_power_law(widths, L)
    assert abs(fit.alpha - 1.1115) < 0.002 and fit.rms_log_error < 0.0069

    def rms(c, alpha, L_inf):
        return float((scaling.power_law(widths, c, alpha, L_inf).log() - L.log()).pow(2).mean().sqrt())

    assert math.isclose(rms(fit.c, fit.alpha, fit.L_inf), fit.rms_log_error, rel_tol=1e-9)
    for dc, da, dl in ((1.01, 0, 0), (0.99, 0, 0), (1, 0.01, 0), (1, -0.01, 0), (1, 0, 1e-4),
                       (1, 0, -1e-4)):   # no nearby point does better: a minimum in all three
        assert rms(fit.c * dc, fit.alpha + da, fit.L_inf + dl) >= fit.rms_log_error


def test_joint_fit_recovers_local_exponents():
    k = torch.tensor([8.0, 16, 32]).repeat(5)
    widths = torch.tensor([256.0, 512, 1024, 2048, 4096]).repeat_interleave(3)
    truth = {**scaling.GAO_JOINT, "alpha": 0.3}
    fit = scaling.fit_joint_nk(widths, k, scaling.joint_nk_law(widths, k, truth))
    assert fit["rms_log_error"] < 1e-3
    for kk in (8, 32):
        assert abs(scaling.local_exponent_N(fit, kk) - scaling.local_exponent_N(truth, kk)) < 0.02
    # Gao et al.'s law: steeper in N at larger k
    assert scaling.local_exponent_N(scaling.GAO_JOINT, 32) > scaling.local_exponent_N(
        scaling.GAO_JOINT, 8) > 0


def test_joint_fit_keeps_every_optimum_and_holds_fixed_parameters():
    k = torch.tensor([8.0, 16, 32]).repeat(5)
    widths = torch.tensor([256.0, 512, 1024, 2048, 4096]).repeat_interleave(3)
    truth = {**scaling.GAO_JOINT, "alpha": 0.3}
    L = scaling.joint_nk_law(widths, k, truth)
    fit = scaling.fit_joint_nk(widths, k, L, restarts=6)
    errors = [o["rms_log_error"] for o in fit["optima"]]
    assert len(errors) <= 6 and errors == sorted(errors) and errors[0] == fit["rms_log_error"]
    # a profile along gamma: held exactly where asked, and worst far from the truth (the data here
    # span enough of N and k to pin gamma down)
    profile = scaling.profile_joint_nk(widths, k, L, "gamma", [-0.3, truth["gamma"], 0.2],
                                       restarts=6)
    assert [p["gamma"] for p in profile] == [-0.3, truth["gamma"], 0.2]
    far, near, other = (p["rms_log_error"] for p in profile)
    assert near < 1e-3 < min(far, other)
    with pytest.raises(ValueError, match="unknown parameters"):
        scaling.fit_joint_nk(widths, k, L, fixed={"delta": 0.0})


def test_bootstrap_fvu_matches_full_data_on_average_and_keeps_pairing():
    gen = torch.Generator().manual_seed(1)
    dev = torch.rand(1270, generator=gen) + 0.5
    err = torch.stack([0.2 * dev * torch.rand(1270, generator=gen) * 2, 0.1 * dev])
    boot = scaling.bootstrap_fvu(err, dev, block=127, n_boot=300)
    assert boot.shape == (300, 2)
    full = err.sum(1) / dev.sum()
    assert torch.allclose(boot.mean(0), full.double(), rtol=0.05)
    assert torch.allclose(boot[:, 1], torch.full((300,), 0.1, dtype=torch.float64))   # exact ratio
    with pytest.raises(ValueError, match="blocks"):
        scaling.bootstrap_fvu(err[:, :100], dev[:100], block=127)


def test_useful_latents_counts_duplicates_once_and_skips_dead():
    gen = torch.Generator().manual_seed(2)
    W = torch.nn.functional.normalize(torch.randn(6, 64, generator=gen), dim=-1)
    W_dec = torch.cat([W, W[:2] + 0.01 * torch.randn(2, 64, generator=gen)])   # 2 near-copies
    density = torch.tensor([0.1, 0.2, 0.1, 0.1, 0.0, 0.1, 0.05, 0.05])           # latent 4 dead
    assert scaling.useful_latents(W_dec, density, threshold=0.9) == 5
    assert scaling.useful_latents(W_dec, density, threshold=1.0) == 7
    with pytest.raises(ValueError, match="W_dec"):
        scaling.useful_latents(W_dec.T, density)


def test_tokens_to_reach_smooths_noise():
    tokens = torch.arange(1, 11) * 1000.0
    fvu = torch.tensor([0.9, 0.5, 0.1, 0.5, 0.4, 0.3, 0.25, 0.2, 0.2, 0.19])   # one lucky batch
    assert scaling.tokens_to_reach(tokens, fvu, 0.31) == 5000.0   # not 3000, the lucky batch
    assert scaling.tokens_to_reach(tokens, fvu, 0.31, window=1) == 3000.0
    assert scaling.tokens_to_reach(tokens, fvu, 0.01) is None


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="not below every loss"):
        scaling.fit_power_law(N, scaling.power_law(N, 1.0, 0.5, 0.0) + 0.01, L_inf=0.5)
    with pytest.raises(ValueError, match="positive"):
        scaling.fit_power_law(-N, N)
    with pytest.raises(ValueError, match="one value per SAE"):
        scaling.fit_power_law(N, N[:3])


def _fails(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_power_law_fit(fn)


def _ls(x, y):
    return checks._line(x, y)


def test_check_power_law_fit_explains_each_wrong_fit(capsys):
    def right(N, L, L_inf):
        s, i = _ls(N.log(), (L - L_inf).log())
        return math.exp(i), -s

    checks.check_power_law_fit(right)
    assert capsys.readouterr().out.startswith("PASSED check_power_law_fit")
    _fails(lambda N, L, L_inf: right(N, L, 0.0), "irreducible term")
    _fails(lambda N, L, L_inf: (right(N, L, L_inf)[0], -right(N, L, L_inf)[1]), "wrong sign")
    _fails(lambda N, L, L_inf: checks._linear_space_fit(N, L - L_inf), "linear space")
    _fails(lambda N, L, L_inf: (lambda s, i: (math.exp(i), -s))(*_ls(N, (L - L_inf).log())),
           "not of N")
    _fails(lambda N, L, L_inf: (lambda s, i: (math.exp(i), -s))(*_ls(N.log(), L - L_inf)),
           "not of L - L_inf")
    _fails(lambda N, L, L_inf: (lambda s, i: (1.0, -1 / s))(*_ls((L - L_inf).log(), N.log())),
           "axes swapped")
    _fails(lambda N, L, L_inf: (lambda s, i: (math.exp(i), -s))(*_ls(N.log10(),
                                                                     (L - L_inf).log10())),
           "log10")

    def stub(*a):
        raise NotImplementedError()
    _fails(stub, "NotImplementedError")
