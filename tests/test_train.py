"""The trainer: normalisation folded back, b_dec init, unit-norm decoder, schedules, history, seeds."""

import math

import pytest
import torch

import sae_minimal as sm
from sae_minimal.train import _lr_factor, geometric_median, train_sae


def _data(n=4096, d=16, scale=37.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * (torch.randn(n, d, generator=g) + 3.0)


def test_normalisation_scale_is_folded_back_into_weights():
    x = _data()
    sae = sm.ReLUSAE(16, 32)
    # lr: this is about units, and on dense data 16 steps of L1 at the short-run default rate
    # (1.6e-2) switch every latent off, leaving x̂ = b_dec (FVU 1 in any units)
    hist = sm.train_sae(sae, x, n_tokens=4096, batch_size=256, lr=4e-3, progress=False)
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


def test_history_logs_every_log_every_steps_and_powers_of_two_before_the_first():
    hist = sm.train_sae(sm.TopKSAE(16, 32, k=4), _data(), n_tokens=20 * 128, batch_size=128,
                        log_every=8, progress=False)
    assert hist["step"] == [1, 2, 4, 8, 16, 20]        # 20: the last step is always logged


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


# --- AuxK, normalised as in Gao et al. -----------------------------------------------------------
def _auxk_setup(residual_scale):
    """A TopK SAE with half its latents dead, a batch x and a reconstruction x_hat whose residual
    is residual_scale times a fixed random one."""
    g = torch.Generator().manual_seed(1)
    sae = sm.TopKSAE(16, 64, k=4, k_aux=8).train()
    sae.tokens_since_fired[::2] = 10 * sae.dead_window
    x = 3.0 * torch.randn(256, 16, generator=g)
    x_hat = x - residual_scale * torch.randn(256, 16, generator=g)
    return sae, x, x_hat, sae.pre_acts(x)


def test_auxk_divides_by_the_residual_variance_and_multiplies_by_the_input_variance():
    from sae_minimal.topk import auxk_loss, topk_relu
    sae, x, x_hat, pre = _auxk_setup(0.1)   # a good reconstruction: Var(e) << Var(x)
    e = x - x_hat
    dead = sae.dead_mask()
    e_hat = topk_relu(pre.masked_fill(~dead, float("-inf")), 8) @ sae.W_dec    # dense, by hand
    var = lambda t: (t - t.mean(0)).pow(2).sum(-1).mean()                       # noqa: E731
    expected = (1 / 32) * min(32 / 8, 1.0) * (e_hat - e).pow(2).sum(-1).mean() * var(x) / var(e)
    got = auxk_loss(sae, x, x_hat, pre, 8, 1 / 32)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0)
    assert var(x) / var(e) > 100      # so an unnormalised AuxK would be far off


def test_auxk_measures_the_residual_relative_to_its_own_size():
    """Scale the residual e and the dead latents' reconstruction of it by the same c: the
    normalised AuxK is unchanged (unnormalised it would change c²-fold), so its pull does not fade
    as x̂ improves and e shrinks."""
    from sae_minimal.topk import auxk_loss
    losses = []
    for c in (1.0, 0.1):
        sae, x, x_hat, pre = _auxk_setup(c)
        with torch.no_grad():
            sae.W_dec.mul_(c)
        losses.append(float(auxk_loss(sae, x, x_hat, pre, 8, 1 / 32).detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_auxk_is_zero_without_dead_latents_and_finite_for_one_row():
    from sae_minimal.topk import auxk_loss
    sae, x, x_hat, pre = _auxk_setup(0.1)
    one_row = auxk_loss(sae, x[:1], x_hat[:1], pre[:1], 8, 1 / 32).detach()  # Var(e) = 0
    assert torch.isfinite(one_row) and float(one_row) >= 0
    sae.tokens_since_fired.zero_()
    assert float(auxk_loss(sae, x, x_hat, pre, 8, 1 / 32).detach()) == 0.0


# --- mixed precision -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kw", [(sm.TopKSAE, {"k": 4}), (sm.BatchTopKSAE, {"k": 4}),
                                    (sm.JumpReLUSAE, {}), (sm.ReLUSAE, {})],
                         ids=["TopK", "BatchTopK", "JumpReLU", "ReLU"])
def test_bf16_precision_trains_float32_weights_close_to_fp32(cls, kw, easy_data):
    """bfloat16 autocast for forward and backward; weights and Adam state stay float32. A short
    dead_window makes AuxK run too (its dense encoder gradient meets bfloat16 there)."""
    x, held_out = easy_data.activations[:20_000], easy_data.activations[-4000:]
    fvus = {}
    for precision in ("fp32", "bf16"):
        sae = cls(64, 256, **kw)
        sae.dead_window = 2048
        hist = sm.train_sae(sae, x, n_tokens=60_000, batch_size=512, precision=precision,
                            progress=False)
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all()
                   for p in sae.parameters())
        assert all(math.isfinite(v) for v in hist["loss"])
        fvus[precision] = sm.metrics.fvu(held_out, sae(held_out).x_hat)
    assert fvus["bf16"] != fvus["fp32"]                         # autocast really ran
    assert abs(fvus["bf16"] - fvus["fp32"]) < 0.1 * fvus["fp32"] + 0.01, fvus


# --- the default learning rate -------------------------------------------------------------------
def test_default_lr_is_gaos_rule_for_long_runs():
    from sae_minimal.train import default_lr
    assert default_lr(768, 16384) == pytest.approx(2e-4)            # their GPT-2 setting
    assert default_lr(768, 16384, n_steps=10**6) == pytest.approx(2e-4)
    assert default_lr(768, 4 * 16384) == pytest.approx(1e-4)        # ∝ 1/√d_sae
    assert default_lr(192, 16384) == pytest.approx(4e-4)            # ∝ 1/√d_in


def test_default_lr_grows_for_short_runs_up_to_a_cap():
    from sae_minimal.train import default_lr
    rates = [default_lr(256, 2048, n) for n in (10**5, 10**4, 1562, 196, 49, 10, 1)]
    assert rates == sorted(rates) and rates[0] < rates[-1]          # shorter run, larger lr
    assert rates[2] == pytest.approx(2e-3, rel=0.05)                # measured best near 2e-3
    assert rates[3] == pytest.approx(5.6e-3, rel=0.05)              # and 5.7e-3 at 196 steps
    assert rates[-1] == rates[-2] == pytest.approx(1 / (8 * 16))    # the cap: 1/(8·√d_in)
    assert default_lr(16, 32) == default_lr(64, 32) == 1 / (8 * 8)  # tiny SAEs: d_in 64's cap


def test_train_sae_uses_the_default_lr_for_its_budget():
    sae = sm.TopKSAE(16, 64, k=4)
    hist = sm.train_sae(sae, _data(), n_tokens=40 * 128, batch_size=128, log_every=1,
                        progress=False)
    assert max(hist["lr"]) == pytest.approx(sm.train.default_lr(16, 64, n_steps=40))


def test_read_ahead_keeps_order_raises_where_the_iterator_failed_and_stops():
    import threading

    from sae_minimal.train import _ReadAhead

    batches = [torch.full((2, 3), float(i)) for i in range(7)]
    assert [int(b[0, 0]) for b in _ReadAhead(iter(batches))] == list(range(7))

    def failing():
        yield batches[0]
        raise RuntimeError("shard 3 is damaged")

    ahead = _ReadAhead(failing())
    assert torch.equal(next(ahead), batches[0])
    with pytest.raises(RuntimeError, match="shard 3"):
        next(ahead)

    def endless():
        while True:
            yield batches[0]

    before = threading.active_count()
    ahead = _ReadAhead(endless())
    next(ahead)
    ahead.close()
    ahead._thread.join(timeout=2)
    assert not ahead._thread.is_alive() and threading.active_count() <= before


def test_reading_ahead_trains_the_same_sae_as_reading_on_demand(monkeypatch):
    """Reading ahead changes when batches are read, not which: with it switched off (identity),
    the same iterator trains the same SAE."""
    import sae_minimal.train as train

    x = torch.randn(4096, 16)
    saes = []
    for read_ahead in (train._ReadAhead, None):
        if read_ahead is None:
            class OnDemand:                     # "reading ahead" that hands back the iterator
                def __new__(cls, stream):
                    return stream
            monkeypatch.setattr(train, "_ReadAhead", OnDemand)
        sae = sm.TopKSAE(16, 64, k=4, seed=0)
        sm.train_sae(sae, iter(x.split(256)), n_tokens=4096, batch_size=256, progress=False)
        saes.append(sae)
    assert torch.equal(saes[0].W_dec, saes[1].W_dec)


def test_train_concurrently_trains_each_sae_as_it_would_train_alone(easy_data):
    """Side by side in threads, each job gets the weights it gets alone on as many torch threads (no
    shared generator, no shared state); results come back in the jobs' order, and the process's
    thread count is restored, also when a job fails."""
    from sae_minimal.train import train_concurrently

    x = easy_data.activations[:20_000]

    def job(seed, cls=sm.TopKSAE, **kw):
        def run():
            sae = cls(64, 256, seed=seed, **kw)
            train_sae(sae, x, n_tokens=16_384, batch_size=512, seed=seed, progress=False)
            return sae
        return run

    jobs = [job(0, k=4), job(1, cls=sm.ReLUSAE, l1_coeff=1.0), job(2, cls=sm.JumpReLUSAE, l0_coeff=1.0)]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads // 2, 1))       # what each of the 2 workers gets
    try:
        alone = [run() for run in jobs]
    finally:
        torch.set_num_threads(threads)
    together = train_concurrently(jobs, workers=2)
    assert torch.get_num_threads() == threads
    assert [type(s) for s in together] == [sm.TopKSAE, sm.ReLUSAE, sm.JumpReLUSAE]
    for a, b in zip(alone, together):
        for name, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[name]), f"{type(a).__name__}.{name} differs"

    def fails():
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        train_concurrently([jobs[0], fails, jobs[0]], workers=2)
    assert torch.get_num_threads() == threads
