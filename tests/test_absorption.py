"""Feature absorption (notebook 08): a planted SAE whose parent latent is absorbed by a child on
some tokens gives the expected rates, and the checker catches the usual mistakes."""

import pytest
import torch

from sae_minimal.course import checks
from sae_minimal.lm import absorption as ab
from sae_minimal.topk import TopKSAE


def planted_sae():
    """d_in 4, 3 latents: 0 = parent along e0, 1 = child along (e0 + e1)/√2, 2 = unrelated e2."""
    sae = TopKSAE(4, 3, k=1, seed=0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0, 0, 0], [0.7071, 0.7071, 0, 0], [0, 0, 1.0, 0]]))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_main_latent_and_absorption_on_a_planted_sae():
    sae = planted_sae()
    parent = torch.tensor([1.0, 0, 0, 0])
    child = torch.tensor([1.0, 1.0, 0, 0])
    other = torch.tensor([0, 0, 1.0, 0])
    x = torch.stack([parent] * 6 + [child] * 2 + [other] * 8)
    y = torch.tensor([True] * 8 + [False] * 8)
    main, f1 = ab.main_latents(sae, x, y, max_main=1, n_candidates=3)
    assert main.tolist() == [0] and f1 == pytest.approx(2 * 6 / (6 + 8))
    # greedy: the child covers a quarter of the parent's tokens, so it joins the main set
    assert ab.main_latents(sae, x, y, n_candidates=3)[0].tolist() == [0, 1]
    rep = ab.absorption_report(sae, x, y, main, parent)
    assert rep["miss_rate"] == pytest.approx(0.25) and rep["absorption"] == pytest.approx(0.25)
    assert rep["absorbers"] == {1: 2}
    # with a probe orthogonal to the child, the misses are not absorption
    codes = sae.encode(x).detach()
    cos = ab.decoder_cosines(sae, torch.tensor([1.0, -1.0, 0, 0]))
    assert ab.absorption_rate(codes, y, main, cos) == 0.0
    with pytest.raises(ValueError, match="No rows"):
        ab.absorption_rate(codes, torch.zeros(16, dtype=torch.bool), main, cos)


def test_check_absorption_rate():
    checks.check_absorption_rate(ab.absorption_rate)

    def fails(fn, hint):
        with pytest.raises(AssertionError, match=hint):
            checks.check_absorption_rate(fn)

    def over_all_rows(codes, positive, main, cos, tau):
        fires = codes > 0
        return float((~fires[:, main].any(1) & (fires & (cos >= tau)).any(1)).float().mean())

    def main_may_fire(codes, positive, main, cos, tau):
        aligned = (cos >= tau).clone()
        aligned[main] = False
        return float(((codes > 0) & aligned).any(1)[positive].float().mean())

    def miss_rate(codes, positive, main, cos, tau):
        return float((~(codes[positive][:, main] > 0).any(1)).float().mean())
    fails(over_all_rows, "all rows")
    fails(main_may_fire, "main latent fires")
    fails(miss_rate, "miss rate")

    def strictly_above(codes, positive, main, cos, tau):
        fires = codes > 0
        return float((~fires[:, main].any(1) & (fires & (cos > tau)).any(1))[positive].float().mean())
    fails(strictly_above, "exactly tau")

    # both pass the first (single main latent) case; the two-main-latent case names each
    def every_main_must_fire(codes, positive, main, cos, tau):
        fires = codes > 0
        return float((~fires[:, main].all(1) & (fires & (cos >= tau)).any(1))[positive].float().mean())

    def first_main_only(codes, positive, main, cos, tau):
        fires = codes > 0
        return float((~fires[:, int(main[0])] & (fires & (cos >= tau)).any(1))[positive].float().mean())
    fails(every_main_must_fire, "no main latent fires")
    fails(first_main_only, "first main latent only")


def test_the_chance_level_is_not_a_seed0_saes_first_decoder_row(monkeypatch):
    """torch.randn(d, seed 0) *is* a seed-0 SAE's initial decoder row 0: as the "random" direction
    it made latent 0 look like an absorber wherever it fired."""
    import sae_minimal as sm
    from sae_minimal.lm import absorption
    sae = sm.TopKSAE(256, 512, k=1, seed=0)
    x = 10 * sae.W_dec[0].detach().expand(8, 256)            # only latent 0 fires
    probe = sm.TopKSAE(256, 512, k=1, seed=5).W_dec[3].detach()
    report = absorption.absorption_report(sae, x, torch.ones(8, dtype=torch.bool),
                                          torch.tensor([7]), probe)
    assert report["absorption_random_direction"] == 0.0
    monkeypatch.setattr(absorption, "random_direction",
                        lambda d, seed=0: torch.randn(d, generator=torch.Generator().manual_seed(0)))
    biased = absorption.absorption_report(sae, x, torch.ones(8, dtype=torch.bool),
                                          torch.tensor([7]), probe)
    assert biased["absorption_random_direction"] == 1.0      # what the old chance level did
    assert biased["absorption_random_max"] == 1.0


def test_the_chance_level_averages_several_random_directions():
    """One random direction per report made the chance level a single draw: 16 by default, their
    mean and their largest, each direction from its own seed."""
    import sae_minimal as sm
    from sae_minimal.lm import absorption
    from sae_minimal.lm.steering import random_direction
    sae = sm.TopKSAE(256, 512, k=4, seed=0)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)) * 10
    everyone, main = torch.ones(64, dtype=torch.bool), torch.tensor([7])
    probe = torch.randn(256, generator=torch.Generator().manual_seed(2))
    report = absorption.absorption_report(sae, x, everyone, main, probe, tau=0.1)
    fires = sae.encode(x) > 0
    by_hand = torch.tensor([float(absorption._absorbing(
        fires, main, absorption.decoder_cosines(sae, random_direction(256, seed=s)), 0.1).any(1).float().mean())
        for s in range(16)])
    assert report["absorption_random_max"] > report["absorption_random_direction"]   # the draws differ
    assert report["absorption_random_direction"] == pytest.approx(float(by_hand.mean()))
    assert report["absorption_random_max"] == pytest.approx(float(by_hand.max()))
