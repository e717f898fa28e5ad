"""Dead-latent resampling (Bricken et al. 2023): what it writes, what it draws, and that train_sae's
resample_every revives latents that plain training leaves dead."""

import pytest
import torch

import sae_minimal as sm
from sae_minimal.resampling import resample_dead_latents


def _killed(seed=0, n_dead=8):
    """A ReLU SAE 16 -> 64 whose first n_dead latents can never fire (b_enc = -1000)."""
    sae = sm.ReLUSAE(16, 64, l1_coeff=0.1, seed=seed)
    with torch.no_grad():
        sae.b_enc[:n_dead] = -1000.0
    return sae


def test_resampling_writes_the_drawn_input_and_leaves_alive_latents_alone():
    torch.manual_seed(0)
    sae, x = _killed(), torch.randn(512, 16)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(16))
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True
    idx = resample_dead_latents(sae, x, dead, generator=torch.Generator().manual_seed(0))
    assert idx.tolist() == list(range(8))
    alive_norm = before["W_enc"][:, 8:].norm(dim=0).mean()
    centred = x - sae.b_dec.detach()
    units = centred / centred.norm(dim=-1, keepdim=True)
    for i in range(8):
        row = sae.W_dec[i].detach()
        assert float(row.norm()) == pytest.approx(1.0, abs=1e-5)
        # the new direction is one of the inputs, centred by b_dec, at unit length
        assert float((units @ row).max()) == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose(sae.W_enc[:, i], 0.2 * alive_norm * row, atol=1e-6)
    assert (sae.b_enc[:8] == 0).all()
    for name in ("W_dec", "b_enc"):
        assert torch.equal(getattr(sae, name)[8:], before[name][8:])
    assert torch.equal(sae.W_enc[:, 8:], before["W_enc"][:, 8:])
    assert torch.equal(sae.b_dec, before["b_dec"])


def test_resampling_draws_the_inputs_the_sae_reconstructs_worst():
    sae = _killed()
    x = torch.zeros(1000, 16)
    x[123] = 50.0 * torch.nn.functional.normalize(torch.randn(16), dim=0)  # the one bad fit
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True
    resample_dead_latents(sae, x, dead, generator=torch.Generator().manual_seed(0))
    target = torch.nn.functional.normalize(x[123] - sae.b_dec, dim=0)
    assert torch.allclose(sae.W_dec[:8], target.expand(8, 16), atol=1e-5)


def test_resampling_resets_adam_moments_of_the_written_entries_only():
    sae, x = _killed(), torch.randn(256, 16)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae(x).loss.backward()
    with torch.no_grad():           # moments everywhere, as after many steps
        sae.b_enc.grad.fill_(1.0)
        sae.W_enc.grad.fill_(1.0)
    opt.step()
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True
    resample_dead_latents(sae, x, dead, opt)
    for key in ("exp_avg", "exp_avg_sq"):
        assert (opt.state[sae.W_enc][key][:, :8] == 0).all()
        assert (opt.state[sae.W_enc][key][:, 8:] != 0).all()
        assert (opt.state[sae.b_enc][key][:8] == 0).all()
        assert (opt.state[sae.W_dec][key][:8] == 0).all()


def test_nothing_dead_means_nothing_changes_and_a_bad_mask_is_refused():
    sae = sm.TopKSAE(16, 64, k=4)
    before = sae.W_dec.detach().clone()
    idx = resample_dead_latents(sae, torch.randn(64, 16), torch.zeros(64, dtype=torch.bool))
    assert idx.numel() == 0 and torch.equal(sae.W_dec, before)
    with pytest.raises(ValueError, match=r"bool tensor of shape \[d_sae=64\]"):
        resample_dead_latents(sae, torch.randn(64, 16), torch.zeros(32, dtype=torch.bool))


def test_gated_biases_are_reset_too():
    sae = sm.GatedSAE(16, 64)
    with torch.no_grad():
        sae.b_gate.fill_(-5.0)
        sae.b_mag.fill_(3.0)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:4] = True
    resample_dead_latents(sae, torch.randn(128, 16), dead)
    assert (sae.b_gate[:4] == 0).all() and (sae.b_mag[:4] == 0).all()
    assert (sae.b_gate[4:] == -5).all()


def test_train_sae_resample_every_revives_latents_plain_training_leaves_dead():
    torch.manual_seed(0)
    x = torch.randn(8192, 16)
    runs = {}
    for every in (None, 4096):
        sae = _killed()
        history = sm.train_sae(sae, x, n_tokens=40_960, batch_size=512, progress=False,
                               dead_window=2048, resample_every=every, resample_until=0.5)
        runs[every] = (sae, history)
    assert runs[None][0].dead_mask(2048)[:8].all()          # never fire, never get a gradient
    assert "resampled" not in runs[None][1]
    history = runs[4096][1]
    assert history["resampled"][0] == [4096, 8]               # all 8 at the first resampling
    assert all(t <= 20_480 for t, _ in history["resampled"])  # only in the first half
    assert runs[4096][0].dead_mask(2048)[:8].float().mean() < 0.5


def test_resample_settings_are_checked():
    with pytest.raises(ValueError, match="resample_every"):
        sm.train_sae(sm.TopKSAE(16, 64, k=4), torch.randn(256, 16), resample_every=0,
                     progress=False)
    with pytest.raises(ValueError, match="resample_until"):
        sm.train_sae(sm.TopKSAE(16, 64, k=4), torch.randn(256, 16), resample_every=64,
                     resample_until=2, progress=False)
