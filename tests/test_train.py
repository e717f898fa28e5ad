"""The trainer: normalisation folded back, b_dec init, unit-norm decoder, schedules, history, seeds."""

import math

import pytest
import torch

import sae_minimal as sm
from sae_minimal.train import _lr_factor, geometric_median


def _data(n=4096, d=16, scale=37.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * (torch.randn(n, d, generator=g) + 3.0)


def test_normalisation_scale_is_folded_back_into_weights():
    x = _data()
    sae = sm.ReLUSAE(16, 32)
    hist = sm.train_sae(sae, x, n_tokens=4096, batch_size=256, progress=False)
    s = hist["input_scale"]
    assert s == pytest.approx(math.sqrt(16) / float(x.norm(dim=-1).mean()), rel=1e-4)
    # The saved SAE works on raw activations: reconstructions are in raw units, not normalised ones.
    out = sae(x[:512])
    assert sm.metrics.fvu(x[:512], out.x_hat) < 0.5
    assert out.x_hat.norm(dim=-1).mean() > 0.5 * x.norm(dim=-1).mean()


def test_fold_input_scale_is_exact():
    for cls, kw in [(sm.ReLUSAE, {}), (sm.TopKSAE, {"k": 3}), (sm.JumpReLUSAE, {}), (sm.GatedSAE, {})]:
        sae = cls(8, 16, **kw).eval()
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(0.3 * torch.randn_like(p))
        x = torch.randn(64, 8)
        s = 7.0
        expected = sae(s * x).x_hat / s
        sae.fold_input_scale(s)
        torch.testing.assert_close(sae(x).x_hat, expected, rtol=1e-4, atol=1e-5, msg=cls.__name__)


def test_b_dec_starts_at_geometric_median():
    x = torch.randn(2000, 4) + torch.tensor([5.0, -2.0, 0.0, 1.0])
    x[:50] += 1000.0   # outliers drag the mean, not the median
    m = geometric_median(x)
    assert (m - torch.tensor([5.0, -2.0, 0.0, 1.0])).norm() < 0.3
    assert (x.mean(0) - torch.tensor([5.0, -2.0, 0.0, 1.0])).norm() > 10


def test_decoder_rows_stay_unit_norm_after_training_steps():
    sae = sm.TopKSAE(16, 64, k=4)
    sm.train_sae(sae, _data(), n_tokens=2048, batch_size=256, progress=False)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))


def test_parallel_gradient_is_removed():
    sae = sm.ReLUSAE(8, 16)
    sae(torch.randn(32, 8)).loss.backward()
    sae.remove_parallel_decoder_grad()
    radial = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert radial.abs().max() < 1e-5


def test_history_has_curves_and_lr_schedule():
    sae = sm.JumpReLUSAE(16, 32)
    hist = sm.train_sae(sae, _data(), n_tokens=40 * 128, batch_size=128, log_every=1, progress=False)
    for key in ("step", "tokens", "loss", "mse", "l0", "fvu", "dead_frac", "lr"):
        assert len(hist[key]) == 40, key
    assert hist["tokens"][-1] == 40 * 128
    assert hist["lr"][-1] < hist["lr"][len(hist["lr"]) // 2]   # decays at the end
    assert hist["loss"][-1] < hist["loss"][0]
    fig = hist.plot()
    assert len(fig.axes) == 4


def test_lr_factor_warmup_and_decay():
    assert _lr_factor(0, 100, 10, 0.2) == pytest.approx(0.1)
    assert _lr_factor(50, 100, 10, 0.2) == 1.0
    assert _lr_factor(90, 100, 10, 0.2) == pytest.approx(0.5)


def test_training_is_reproducible_with_a_seed():
    x = _data()
    a, b = sm.TopKSAE(16, 32, k=4, seed=3), sm.TopKSAE(16, 32, k=4, seed=3)
    sm.train_sae(a, x, n_tokens=2048, batch_size=256, seed=5, progress=False)
    sm.train_sae(b, x, n_tokens=2048, batch_size=256, seed=5, progress=False)
    torch.testing.assert_close(a.W_dec, b.W_dec)


def test_trains_from_an_iterator_of_batches():
    x = _data()
    sae = sm.TopKSAE(16, 32, k=4)
    hist = sm.train_sae(sae, iter(x.split(128)), batch_size=128, progress=False, log_every=1)
    assert hist["tokens"][-1] == 4096
    assert 0 <= hist["data_seconds"] < hist["seconds"]


def test_continuing_training_keeps_units_consistent():
    x = _data()
    sae = sm.TopKSAE(16, 32, k=4)
    sm.train_sae(sae, x, n_tokens=4096, batch_size=256, progress=False)
    before = sm.metrics.fvu(x, sae(x).x_hat)
    sm.train_sae(sae, x, n_tokens=4096, batch_size=256, progress=False)
    after = sm.metrics.fvu(x, sae(x).x_hat)
    assert after < before * 1.5 and after < 0.5
