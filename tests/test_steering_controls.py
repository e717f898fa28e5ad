"""Notebook 05's controls and input-side selection, on known answers: the random control's own random stream, concept
labels from text, firing F1, the mean-difference and unembedding directions, the direct logit effect, and the two
05 checkers (each passes the reference and names what a wrong solution got wrong)."""

from types import SimpleNamespace

import pytest
import torch

from sae_minimal.base import BaseSAE
from sae_minimal.course import checks
from sae_minimal.lm.steering import (concept_context, concept_tokens, direct_logit_effect, firing_f1,
                                     mean_difference, random_direction, unembedding_direction)


# --- the random control ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d_in", [8, 256])
def test_random_direction_is_no_sae_initial_decoder_row(d_in):
    """It used to be exactly W_dec[0] at initialisation of BaseSAE(seed=seed): the same randn stream. A control that
    the SAE started from is no control."""
    for seed in range(4):
        r = random_direction(d_in, seed=seed)
        for sae_seed in range(4):
            W_dec = BaseSAE(d_in, 16, seed=sae_seed).W_dec.detach()
            cos = (W_dec @ r).abs().max()           # rows of W_dec and r are unit vectors
            assert cos < 0.99, f"random_direction({d_in}, seed={seed}) is a row of BaseSAE(seed={sae_seed})'s W_dec"


def test_random_direction_norm_determinism_and_bad_seed():
    a, b = random_direction(64, seed=3, norm=2.5), random_direction(64, seed=3, norm=2.5)
    assert torch.equal(a, b) and float(a.norm()) == pytest.approx(2.5)
    assert not torch.allclose(a, random_direction(64, seed=4, norm=2.5))
    with pytest.raises(ValueError, match="seed"):
        random_direction(64, seed=-1)


# --- concept labels and input-side selection -------------------------------------------------------------------
def test_concept_tokens_matches_case_and_space_only():
    words = {0: " thou", 1: "Thou", 2: "thousand", 3: " thee", 4: " the", 5: "thou "}
    tokenizer = SimpleNamespace(decode=lambda ids: words[ids[0]])
    assert concept_tokens(tokenizer, 6, ["thou", "thee"]).tolist() == [0, 1, 3, 5]
    with pytest.raises(ValueError, match="No token"):
        concept_tokens(tokenizer, 6, ["bridge"])


def test_concept_context_looks_back_window_tokens():
    tokens = torch.tensor([[5, 1, 5, 5, 5, 2, 5, 5]])
    got = concept_context(tokens, torch.tensor([1, 2]), window=2)
    assert got.int().tolist() == [[0, 1, 1, 0, 0, 1, 1, 0]]
    assert concept_context(tokens, torch.tensor([1]), window=1).int().tolist() == [[0, 1, 0, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="window"):
        concept_context(tokens, torch.tensor([1]), window=0)


def test_firing_f1_known_answer():
    holds = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    fires = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)
    sep = firing_f1(fires, holds)
    assert sep["precision"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert sep["recall"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert sep["f1"].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0])
    with pytest.raises(ValueError, match="holds at no position"):
        firing_f1(fires, torch.zeros(6, dtype=torch.bool))


def test_mean_difference_known_answer_and_errors():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0], [0.0, 3.0], [0.0, 2.0]])
    holds = torch.tensor([True, True, False, False, False])
    assert mean_difference(x, holds).tolist() == pytest.approx([2.0, -1.0])
    with pytest.raises(ValueError, match="some rows"):
        mean_difference(x, torch.ones(5, dtype=torch.bool))


# --- non-SAE directions and their direct logit effect ------------------------------------------------------------
def _fake_model(d=16, vocab=50, seed=0):
    W_U = torch.randn(d, vocab, generator=torch.Generator().manual_seed(seed))
    return SimpleNamespace(W_U=W_U, cfg=SimpleNamespace(d_vocab_out=vocab))


def test_unembedding_direction_has_the_largest_direct_effect_per_unit_norm():
    model, ids = _fake_model(), torch.tensor([3, 7, 11])
    u = unembedding_direction(model, ids)
    expected = model.W_U[:, ids].mean(1) - model.W_U.mean(1)
    torch.testing.assert_close(u, expected)
    best = direct_logit_effect(model, u / u.norm(), ids)
    assert best == pytest.approx(float(u.norm()), rel=1e-5)        # (v W_U)[ids].mean - (v W_U).mean = v·u
    for seed in range(20):
        r = random_direction(16, seed=seed)
        assert direct_logit_effect(model, r, ids) < best
    assert direct_logit_effect(model, 3 * u, ids) == pytest.approx(3 * direct_logit_effect(model, u, ids), rel=1e-5)
    with pytest.raises(ValueError, match="ids"):
        direct_logit_effect(model, u, torch.tensor([50]))


# --- the 05 checkers ---------------------------------------------------------------------------------------------
def fails_with(check, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        check(fn)


def test_check_steering_hook(capsys):
    def good(act, direction, alpha):
        out = act.clone()
        out[:, 1:] += alpha * direction
        return out

    checks.check_steering_hook(good)
    assert capsys.readouterr().out.startswith("PASSED check_steering_hook")
    fails_with(checks.check_steering_hook, lambda act, d, a: act + a * d, "BOS")
    fails_with(checks.check_steering_hook, lambda act, d, a: good(act, d / d.norm(), a), "normalised")
    fails_with(checks.check_steering_hook, lambda act, d, a: good(act, d, 1.0), "without scaling it by alpha")
    fails_with(checks.check_steering_hook, lambda act, d, a: good(act, -d, a), "sign is flipped")

    def last_only(act, d, a):
        out = act.clone()
        out[:, -1] += a * d
        return out
    fails_with(checks.check_steering_hook, last_only, "only the last position")

    def in_place(act, d, a):
        act[:, 1:] += a * d
        return act
    fails_with(checks.check_steering_hook, in_place, "in place")

    def batch_axis(act, d, a):
        out = act.clone()
        out[1:] += a * d
        return out
    fails_with(checks.check_steering_hook, batch_axis, "sliced the batch axis")


def test_check_mean_difference(capsys):
    checks.check_mean_difference(lambda x, h: x[h].mean(0) - x[~h].mean(0))
    assert capsys.readouterr().out.startswith("PASSED check_mean_difference")
    fails_with(checks.check_mean_difference, lambda x, h: x[~h].mean(0) - x[h].mean(0), "sign is flipped")
    fails_with(checks.check_mean_difference, lambda x, h: x[h].mean(0) - x.mean(0), "mean over \\*all\\* rows")
    fails_with(checks.check_mean_difference, lambda x, h: mean_difference(x, h) / mean_difference(x, h).norm(),
               "normalised")
    fails_with(checks.check_mean_difference, lambda x, h: x[h].sum(0) - x[~h].sum(0), "sums, not means")
    fails_with(checks.check_mean_difference, lambda x, h: x.mean(1), "expected shape")
