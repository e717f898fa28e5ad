"""Fault injection for train_sae: settings that cannot train are refused at once, a loss or
gradient that goes non-finite (or explodes) stops training with TrainingDiverged, and data that
runs out or comes in odd batch sizes is reported instead of silently bending the LR schedule."""

import math
import warnings

import pytest
import torch

import sae_minimal as sm
from sae_minimal.train import TrainingDiverged, TrainingWarning


def _data(n=2048, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 37.0 * (torch.randn(n, d, generator=g) + 3.0)


def _state(sae):
    return {k: v.clone() for k, v in sae.state_dict().items()}


def _no_warnings(fn):
    """Run fn() and fail on any warning (a correct run must stay quiet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


# --- settings that cannot work: refused before anything changes ----------------------------------
BAD_SETTINGS = [
    ("lr", float("nan")), ("lr", 0.0), ("lr", -1e-3), ("lr", float("inf")),
    ("betas", (0.9, float("nan"))), ("betas", (1.0, 0.999)), ("betas", (0.9,)),
    ("grad_clip", float("nan")), ("grad_clip", -1.0), ("grad_clip", float("inf")),
    ("lr_decay_frac", float("nan")), ("lr_decay_frac", 1.5), ("lr_decay_frac", -0.1),
    ("sparsity_warmup_frac", float("nan")), ("sparsity_warmup_frac", float("inf")),
    ("n_tokens", 0), ("n_tokens", -5), ("n_tokens", float("nan")), ("n_tokens", 10.5),
    ("batch_size", 0), ("batch_size", -1), ("batch_size", 64.0),
    ("b_dec_init", "median"), ("lr_warmup_steps", -1), ("lr_warmup_steps", float("nan")),
    ("log_every", 0), ("dead_window", 0), ("seed", None),
    ("precision", "fp16"), ("precision", "bfloat16"), ("precision", torch.bfloat16),
]


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=[f"{n}={v}" for n, v in BAD_SETTINGS])
def test_settings_that_cannot_train_are_refused_at_once(name, value):
    sae = sm.ReLUSAE(16, 32)
    before = _state(sae)
    with pytest.raises(ValueError, match=rf"^{name} must be .*; got "):
        sm.train_sae(sae, _data(), progress=False, **{name: value})
    # nothing changed: not b_dec, not the token count
    assert all(torch.equal(before[k], v) for k, v in sae.state_dict().items())
    assert sae.trained_tokens == 0


def test_whole_float_n_tokens_is_accepted():
    hist = sm.train_sae(sm.ReLUSAE(16, 32), _data(), n_tokens=1e3, batch_size=250,
                        progress=False, log_every=1)
    assert hist["tokens"][-1] == 1000


def test_float16_sae_is_refused_with_the_fix():
    sae = sm.ReLUSAE(16, 32, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"float16.*NaN.*float32.*bfloat16.*precision='bf16'"):
        sm.train_sae(sae, _data(), progress=False)
    assert sae.trained_tokens == 0


def test_precision_fp16_is_refused_saying_why_and_what_to_use():
    with pytest.raises(ValueError, match=r"'fp32'.*'bf16'.*float16 is not offered.*overflows"):
        sm.train_sae(sm.TopKSAE(16, 32, k=4), _data(), precision="fp16", progress=False)
    with pytest.raises(ValueError, match=r"'fp32'.*'bf16'.*; got 'BF16'") as err:
        sm.train_sae(sm.TopKSAE(16, 32, k=4), _data(), precision="BF16", progress=False)
    assert "float16 is not offered" not in str(err.value)


def test_bfloat16_sae_trains_to_finite_weights():
    sae = sm.TopKSAE(16, 32, k=4, dtype=torch.bfloat16)
    hist = _no_warnings(lambda: sm.train_sae(sae, _data(), n_tokens=4096, batch_size=256,
                                             progress=False, log_every=1))
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    assert hist["loss"][-1] < hist["loss"][0]


def test_sae_with_nan_weights_is_refused():
    sae = sm.TopKSAE(16, 32, k=4)
    with torch.no_grad():
        sae.W_enc[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"W_enc already holds NaN/inf.*Build a new SAE"):
        sm.train_sae(sae, _data(), progress=False)


def test_not_an_sae_is_refused():
    with pytest.raises(TypeError, match="sae must be an SAE from sae_minimal"):
        sm.train_sae(torch.nn.Linear(16, 16), _data(), progress=False)


def test_all_zero_activations_are_refused():
    with pytest.raises(ValueError, match="all zero"):
        sm.train_sae(sm.ReLUSAE(16, 32), torch.zeros(256, 16), batch_size=128, progress=False)


def test_activations_beyond_float32_are_refused():
    x = _data().double() * 1e300   # finite in float64, inf once cast to the SAE's float32
    with pytest.raises(ValueError, match=r"beyond torch.float32's range.*[Ss]cale the activations"):
        sm.train_sae(sm.ReLUSAE(16, 32), x, progress=False)

    def stream():   # the same fault in one batch of an iterator
        for i, batch in enumerate(_data().split(128)):
            yield batch.double() * (1e300 if i == 5 else 1.0)
    with pytest.raises(ValueError, match=r"batch 5 .*beyond torch.float32's range"):
        sm.train_sae(sm.ReLUSAE(16, 32), stream(), batch_size=128, progress=False)


# --- the LR schedule counts the steps that really run --------------------------------------------
def test_batch_size_larger_than_the_data_keeps_the_lr_schedule():
    x = _data(100)
    with pytest.warns(TrainingWarning, match="larger than the 100 rows"):
        hist = sm.train_sae(sm.ReLUSAE(16, 32), x, n_tokens=200 * 100, batch_size=1000,
                            log_every=1, progress=False)
    assert len(hist["lr"]) == 200
    assert all(lr > 0 for lr in hist["lr"])    # was 0 for 180 of the 200 steps
    assert hist["lr"][-1] < 0.1 * hist["lr"][100]  # and still decays at the very end


def test_iterator_of_single_rows_trains_on_a_whole_schedule_and_is_reported():
    x = _data(512)
    with pytest.warns(TrainingWarning, match=r"batches of 1 row, but batch_size=128") as record:
        hist = sm.train_sae(sm.ReLUSAE(16, 32), iter(x), n_tokens=512, batch_size=128,
                            log_every=1, progress=False)
    assert len([w for w in record if w.category is TrainingWarning]) == 1   # warned once
    assert len(hist["lr"]) == 512
    assert all(lr > 0 for lr in hist["lr"])   # not 0 after the first 4 "steps"
    assert max(hist["lr"]) <= sm.train.default_lr(16, 32, n_steps=4)  # warmup never overshoots
    assert hist["lr"][-1] < 0.1 * max(hist["lr"])   # and it decays by the end
    # the normalisation comes from batch_size rows, not from the first single row
    expected = math.sqrt(16) / float(x[:128].norm(dim=-1).mean())
    assert hist["input_scale"] == pytest.approx(expected, rel=1e-5)


def test_iterator_that_runs_out_early_is_reported():
    with pytest.warns(TrainingWarning, match=r"ran out after 2,048 of the n_tokens=10,000"):
        hist = sm.train_sae(sm.ReLUSAE(16, 32), iter(_data().split(128)), n_tokens=10_000,
                            batch_size=128, progress=False, log_every=1)
    assert hist["tokens"][-1] == 2048


def test_iterator_that_lasts_gives_no_warning():
    hist = _no_warnings(lambda: sm.train_sae(sm.ReLUSAE(16, 32), iter(_data().split(128)),
                                             n_tokens=2048, batch_size=128, progress=False))
    assert hist["tokens"][-1] == 2048


def test_nan_batch_from_an_iterator_is_named():
    def stream():
        for i, batch in enumerate(_data().split(128)):
            if i == 5:
                batch = batch.clone()
                batch[3, 3] = float("nan")
            yield batch
    sae = sm.ReLUSAE(16, 32)
    with pytest.raises(ValueError, match=r"batch 5 \(after 640 training tokens\) contains 1 NaN"):
        sm.train_sae(sae, stream(), batch_size=128, progress=False)
    assert sae.trained_tokens == 640 and not sae.training


# --- divergence: stopped at the first bad step, with the term and what to try --------------------
@pytest.mark.parametrize("make", [lambda: sm.ReLUSAE(16, 32), lambda: sm.TopKSAE(16, 32, k=4),
                                  lambda: sm.JumpReLUSAE(16, 32), lambda: sm.GatedSAE(16, 32)],
                         ids=["relu", "topk", "jumprelu", "gated"])
def test_exploding_lr_raises_training_diverged(make):
    sae = make()
    with pytest.raises(TrainingDiverged, match=r"step 1 .*exploded.*lower lr.*lr=1e\+06") as err:
        sm.train_sae(sae, _data(), lr=1e6, n_tokens=4096, batch_size=256, progress=False)
    assert err.value.step == 1 and err.value.tokens == 256
    assert sae.trained_tokens == 256 and not sae.training   # handed back, in eval mode


def _inject(sae, term, at_call, value=float("inf")):
    """Make the loss term ``term`` equal ``value`` on the ``at_call``-th forward pass (from 0)."""
    calls = [0]
    loss_terms = sae.loss_terms

    def faulty(x, x_hat, enc):
        terms = loss_terms(x, x_hat, enc)
        if calls[0] == at_call:
            terms[term] = terms[term] * value
        calls[0] += 1
        return terms
    sae.loss_terms = faulty


def test_non_finite_loss_term_stops_training_at_that_step():
    kw = dict(batch_size=128, lr_decay_frac=0.0, lr_warmup_steps=2, sparsity_warmup_frac=0.0,
              log_every=1, progress=False)
    sae = sm.ReLUSAE(16, 32)
    _inject(sae, "l1", at_call=3)
    with pytest.raises(TrainingDiverged, match=r"step 3 \(after 384 tokens\): the loss term l1 "
                                               r"went non-finite") as err:
        sm.train_sae(sae, _data(), n_tokens=2048, **kw)
    assert err.value.step == 3 and math.isinf(err.value.losses["l1"])
    assert len(err.value.history["loss"]) == 3   # the curves until then
    assert "lower lr" in str(err.value) and "huge values" in str(err.value)
    # handed back exactly as a run that stopped after those 3 steps: the bad step changed nothing
    # and the scale is folded back, so it works on raw activations
    reference = sm.ReLUSAE(16, 32)
    sm.train_sae(reference, _data(), n_tokens=3 * 128, **kw)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(sae.state_dict()[name], value, msg=name)
    assert sae.trained_tokens == 384 and not sae.training and sae.sparsity_warmup == 1.0
    centre = sm.train.geometric_median(_data())   # b_dec starts there: raw units, not s·x's
    assert (sae.b_dec - centre).norm() < 0.05 * centre.norm()


def test_nan_in_a_topk_auxiliary_term_is_named():
    sae = sm.TopKSAE(16, 32, k=4)
    _inject(sae, "auxk", at_call=0, value=float("nan"))
    with pytest.raises(TrainingDiverged, match=r"step 0 .*loss term auxk went non-finite") as err:
        sm.train_sae(sae, _data(), batch_size=128, progress=False)
    assert "lower lr" not in str(err.value)   # no update has happened yet: the lr is not to blame


def test_non_finite_gradient_with_a_finite_loss_is_caught():
    sae = sm.ReLUSAE(16, 32)
    loss_terms = sae.loss_terms

    def faulty(x, x_hat, enc):   # value 0, gradient 0 · ∞ = NaN (d√u/du at u = 0)
        return {**loss_terms(x, x_hat, enc), "bad": 0.0 * torch.sqrt((sae.W_enc * 0).sum())}
    sae.loss_terms = faulty
    with pytest.raises(TrainingDiverged, match=r"step 0 .*gradient went non-finite"):
        sm.train_sae(sae, _data(), batch_size=128, progress=False)
    assert all(torch.isfinite(p).all() for p in sae.parameters())   # no NaN step was taken


def test_activations_too_large_for_float32_arithmetic_are_blamed_not_the_lr():
    x = _data() * 1e18   # finite, but ||x||² overflows float32 without normalisation
    with pytest.raises(TrainingDiverged, match=r"step 0 .*Try smaller activations") as err:
        sm.train_sae(sm.ReLUSAE(16, 32), x, normalize=False, progress=False)
    assert "lower lr" not in str(err.value)
    # normalised (the default), the same data trains
    sm.train_sae(sm.ReLUSAE(16, 32), x, n_tokens=2048, batch_size=256, progress=False)


def test_a_sane_run_is_not_flagged_as_diverged():
    # a large sparsity penalty ramps the loss up well above its first value: still no divergence
    sae = sm.ReLUSAE(16, 64, l1_coeff=50.0)
    hist = _no_warnings(lambda: sm.train_sae(sae, _data(), n_tokens=4096, batch_size=128,
                                             sparsity_warmup_frac=0.5, log_every=1,
                                             progress=False))
    assert max(hist["loss"]) > 2 * hist["loss"][0]


def test_keyboard_interrupt_hands_back_an_sae_in_raw_units():
    """Ctrl-C mid-training: the SAE comes back folded to raw units, counting the tokens it saw."""
    x = _data() * 50.0                          # raw units far from the normalised ones

    def batches():
        for i, b in enumerate(x.split(128)):
            if i == 10:
                raise KeyboardInterrupt
            yield b

    sae = sm.TopKSAE(16, 64, k=4)
    with pytest.raises(KeyboardInterrupt):
        sm.train_sae(sae, batches(), n_tokens=4096, batch_size=128, progress=False)
    assert sae.trained_tokens == 10 * 128 and not sae.training
    with torch.no_grad():
        fvu = sm.metrics.fvu(x[:512], sae(x[:512]).x_hat)
    assert fvu < 1.0, "reconstructions must be in raw units (a normalised-units SAE gives FVU >> 1)"
