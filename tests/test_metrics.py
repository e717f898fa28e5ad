import pytest
import torch

from sae_minimal import metrics
from sae_minimal.synthetic import make_synthetic


def test_fvu_known_values():
    x = torch.randn(1000, 8)
    assert metrics.fvu(x, x) == 0.0
    assert metrics.fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)
    assert metrics.explained_variance(x, 0.5 * x + 0.5 * x.mean(0)) == pytest.approx(0.75, abs=1e-5)


def test_l0_density_dead():
    z = torch.tensor([[1.0, 0, 0, 2], [0, 0, 0, 3], [4, 0, 0, 0], [1, 0, 0, 1]])
    assert metrics.l0(z) == 1.5
    assert metrics.feature_density(z).tolist() == [0.75, 0.0, 0.0, 0.75]
    assert metrics.dead_fraction(z) == 0.5


def test_f1_from_counts_is_the_harmonic_mean_of_precision_and_recall():
    a = torch.rand(500, 6) < 0.3                         # where each of 6 latents fires
    b = torch.rand(500, 6) < 0.2
    a[:, 5] = b[:, 5] = False                            # neither fires: the empty value
    both, n_a, n_b = (a & b).sum(0), a.sum(0), b.sum(0)
    precision, recall = both / n_a.clamp_min(1), both / n_b.clamp_min(1)
    expected = 2 * precision * recall / (precision + recall)
    f1 = metrics.f1_from_counts(both, n_a, n_b)
    assert torch.allclose(f1[:5], expected[:5].float()) and f1[5] == 0
    assert metrics.f1_from_counts(both, n_a, n_b, empty=float("nan"))[5].isnan()
    assert float(metrics.f1_from_counts(3, 4, 6)) == pytest.approx(0.6)   # numbers too


def test_mmcs_is_one_for_permuted_rescaled_copy_and_asymmetric():
    W = torch.randn(20, 8)
    assert metrics.mmcs(W, 3 * W[torch.randperm(20)]) == pytest.approx(1.0, abs=1e-6)
    W_big = torch.cat([W, torch.randn(30, 8)])
    assert metrics.mmcs(W, W_big) == pytest.approx(1.0, abs=1e-6)
    assert metrics.mmcs(W_big, W) < 0.95
    with pytest.raises(ValueError, match="share a dimension"):
        metrics.mmcs(W, torch.randn(20, 7))


def test_synthetic_controls():
    d = make_synthetic(d_in=32, n_features=64, n_samples=20_000, p=0.05, seed=0)
    assert d.activations.shape == (20_000, 32) and d.codes.shape == (20_000, 64)
    torch.testing.assert_close(d.codes @ d.dictionary, d.activations)
    assert (d.codes > 0).float().mean() == pytest.approx(0.05, rel=0.05)
    pl = make_synthetic(d_in=32, n_features=64, n_samples=20_000, p=0.05, firing="power_law", seed=0)
    freq = (pl.codes > 0).float().mean(0)
    assert freq[:8].mean() > 3 * freq[-8:].mean()
    corr = make_synthetic(d_in=32, n_features=64, n_samples=20_000, p=0.05, correlation=0.8, seed=0)
    a = (corr.codes > 0).float()
    same_group = torch.corrcoef(a[:, :2].T)[0, 1]
    assert same_group > 0.2
    tree = make_synthetic(d_in=32, n_features=64, n_samples=20_000, p=0.1, n_parents=2,
                          children_per_parent=3, seed=0)
    act = tree.codes > 0
    assert tree.parent[1:4].tolist() == [0, 0, 0]
    assert not (act[:, 1:4].any(1) & ~act[:, 0]).any()      # children only with their parent
    assert (act[:, 1:4].sum(1) <= 1).all()                  # at most one child at a time
    orth = make_synthetic(d_in=32, n_features=16, n_samples=100, orthogonal=True)
    torch.testing.assert_close(orth.dictionary @ orth.dictionary.T, torch.eye(16), atol=1e-5, rtol=0)
    noisy = make_synthetic(d_in=32, n_features=16, n_samples=1000, noise=0.1)
    assert (noisy.activations - noisy.codes @ noisy.dictionary).std() == pytest.approx(0.1, rel=0.1)
