"""Ground-truth recovery: each sparse variant finds >= 95% of the true features (cos > 0.9) on easy
synthetic data in seconds; the L1 SAE measurably shrinks magnitudes while TopK does not."""

import pytest
import torch

import sae_minimal as sm
from sae_minimal.metrics import magnitude_ratio, recovery
from sae_minimal.synthetic import make_synthetic

VARIANTS = [
    (sm.TopKSAE, {"k": 6}), (sm.BatchTopKSAE, {"k": 6}), (sm.JumpReLUSAE, {}),
    (sm.GatedSAE, {"l1_coeff": 3.0}),   # λ = 1 leaves L0 near 27 (true L0 3.8): too dense to recover
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cls,kw", VARIANTS, ids=[c.__name__ for c, _ in VARIANTS])
def test_an_untrained_sae_recovers_almost_nothing(cls, kw, seed):
    """The control for every recovery test: with the same seed for SAE and data, equal d_in and
    d_sae >= n_features, an SAE must not start on the true dictionary."""
    data = make_synthetic(d_in=64, n_features=128, n_samples=100, p=0.03, seed=seed)
    rec = recovery(cls(64, 256, seed=seed, **kw), data.dictionary)
    assert rec["frac_recovered"] < 0.05 and rec["mmcs"] < 0.6, rec


@pytest.mark.parametrize("cls,kw", VARIANTS, ids=[c.__name__ for c, _ in VARIANTS])
def test_recovers_true_features(cls, kw, easy_data):
    """With the default learning rate, 200k tokens suffice (measured: >= 97% recovered, FVU <=
    0.07 for every variant; the rate of before issue 18, 1.6e-3 here, left Gated at 46%, JumpReLU
    at 85% and BatchTopK at 88%)."""
    sae = cls(64, 256, **kw)
    sm.train_sae(sae, easy_data.activations, n_tokens=200_000, batch_size=512, progress=False)
    rec = recovery(sae, easy_data.dictionary)
    assert rec["frac_recovered"] >= 0.95, rec
    x = easy_data.activations[:4000]
    assert sm.metrics.fvu(x, sae(x).x_hat) < 0.1


def test_l1_shrinks_magnitudes_and_topk_does_not():
    data = make_synthetic(d_in=64, n_features=48, n_samples=40_000, p=0.05, orthogonal=True, seed=1)
    relu = sm.ReLUSAE(64, 96, l1_coeff=1.0)
    topk = sm.TopKSAE(64, 96, k=6)
    for sae in (relu, topk):
        sm.train_sae(sae, data.activations, n_tokens=400_000, batch_size=512, progress=False)
    r_l1, r_topk = magnitude_ratio(relu, data), magnitude_ratio(topk, data)
    assert len(r_l1) >= 40 and len(r_topk) >= 40
    assert r_l1.median() < 0.95          # shrinkage: recovered / true magnitude < 1
    assert r_topk.median() > 0.98        # no magnitude penalty, no shrinkage
    assert r_l1.median() < r_topk.median() - 0.03
