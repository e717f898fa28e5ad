"""What ``train_sae`` refuses, warns about and raises, kept apart from the loop it guards.

    check_settings, check_sae    refuse before anything changes: NaN, n_tokens=0, float16 weights...
    training_units, input_scale  data that would overflow in the SAE's dtype, all-zero data
    step_is_sound, diverged      one check per step; ``TrainingDiverged`` names the term and the fix
    warn                         ``TrainingWarning``: data ran out, batches far from batch_size
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor

from .base import BaseSAE


# --- what train_sae refuses, warns about, and raises ----------------------------------------------
class TrainingDiverged(RuntimeError):
    """``train_sae`` stopped because a loss term or the gradient went non-finite, or the loss grew
    over ``EXPLODED`` times its first value. The SAE is handed back in raw units (as after an
    interrupt) with the weights from before that step, but it is *not* trained: do not use or save
    it. Attributes: ``step`` and ``tokens`` (where it happened), ``losses`` (that step's named loss
    terms as floats) and ``history`` (the curves until then)."""

    def __init__(self, message: str, *, step: int, tokens: int, losses: dict[str, float],
                 history):
        super().__init__(message)
        self.step, self.tokens, self.losses, self.history = step, tokens, losses, history


class TrainingWarning(UserWarning):
    """``train_sae`` ran, but not quite as asked (the data ran out early, batches of another
    size than ``batch_size``): the message says what happened and what to pass instead."""


# A loss over EXPLODED · max(first loss, E||x||²) counts as diverged: x̂ = 0 costs E||x||², and no
# sane run climbs a million-fold above that or its own start.
EXPLODED = 1e6


def _real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


PRECISIONS = ("fp32", "bf16")


def check_settings(*, n_tokens, batch_size, lr, betas, lr_warmup_steps, lr_decay_frac,
                    sparsity_warmup_frac, b_dec_init, grad_clip, dead_window, log_every,
                    seed, precision="fp32", resample_every=None,
                    resample_until=0.5, checkpoint_every=300.0) -> int | None:
    """Refuse, before anything changes, a setting that cannot train (NaN, 0 or negative where
    that means nothing). Returns n_tokens as an int (``1e6`` is fine) or None."""
    rules = [  # (name, value, is it usable?, what to pass instead)
        ("n_tokens", n_tokens, n_tokens is None
         or (_real(n_tokens) and float(n_tokens).is_integer() and n_tokens >= 1),
         "a whole number >= 1, or None for one pass over the data"),
        ("batch_size", batch_size, _integer(batch_size) and batch_size >= 1,
         "an integer >= 1 (rows per Adam step), e.g. 1024"),
        ("lr", lr, lr is None or (_real(lr) and lr > 0),
         "a finite number > 0 such as 1e-3, or None for train.default_lr(d_in, d_sae, n_steps)"),
        ("betas", betas, isinstance(betas, (tuple, list)) and len(betas) == 2
         and all(_real(b) and 0 <= b < 1 for b in betas),
         "two numbers in [0, 1), e.g. the default (0.8, 0.999)"),
        ("lr_warmup_steps", lr_warmup_steps, lr_warmup_steps is None
         or (_integer(lr_warmup_steps) and lr_warmup_steps >= 0),
         "an integer >= 0, or None for 5% of the steps (at most 1000)"),
        ("lr_decay_frac", lr_decay_frac, _real(lr_decay_frac) and 0 <= lr_decay_frac <= 1,
         "a number in [0, 1]: the final fraction of training over which the LR decays to 0"),
        ("sparsity_warmup_frac", sparsity_warmup_frac,
         _real(sparsity_warmup_frac) and 0 <= sparsity_warmup_frac <= 1,
         "a number in [0, 1]: the first fraction of training that ramps the sparsity penalty up"),
        ("b_dec_init", b_dec_init, b_dec_init in ("geometric_median", "mean", "zeros"),
         "'geometric_median', 'mean' or 'zeros'"),
        ("grad_clip", grad_clip, grad_clip is None or (_real(grad_clip) and grad_clip >= 0),
         "a finite number > 0 such as 1.0, or None (or 0) for no clipping"),
        ("dead_window", dead_window, dead_window is None
         or (_integer(dead_window) and dead_window >= 1),
         "an integer >= 1 (tokens), or None for the SAE's own dead_window"),
        ("log_every", log_every, log_every is None or (_integer(log_every) and log_every >= 1),
         "an integer >= 1 (steps), or None for about 200 points per run"),
        ("seed", seed, _integer(seed), "an integer"),
        ("resample_every", resample_every, resample_every is None
         or (_integer(resample_every) and resample_every >= 1),
         "an integer >= 1 (training tokens between resamplings), or None for no resampling"),
        ("resample_until", resample_until, _real(resample_until) and 0 <= resample_until <= 1,
         "a number in [0, 1]: the first fraction of training during which dead latents are "
         "resampled"),
        ("checkpoint_every", checkpoint_every, _real(checkpoint_every) and checkpoint_every >= 0,
         "a number of seconds >= 0 between checkpoints (0: after every step)"),
        ("precision", precision, isinstance(precision, str) and precision in PRECISIONS,
         "'fp32' (the default) or 'bf16' (bfloat16 autocast for the forward and backward passes, "
         "float32 weights and Adam state)" + (
             ". float16 is not offered: its 5-bit exponent overflows and underflows in SAE "
             "training (bfloat16 has float32's range)" if str(precision).lower() in
             ("fp16", "float16", "half", "torch.float16") else "")),
    ]
    for name, value, ok, use in rules:
        if not ok:
            raise ValueError(f"{name} must be {use}; got {value!r}.")
    return int(n_tokens) if n_tokens is not None else None


def check_sae(sae: object) -> None:
    """Refuse an SAE that cannot train: not an SAE, float16 weights, weights already NaN/inf."""
    if not isinstance(sae, BaseSAE):
        raise TypeError("sae must be an SAE from sae_minimal (e.g. TopKSAE(d_in, d_sae, k=32)), "
                        f"got {type(sae).__name__}.")
    for name, p in sae.named_parameters():
        if p.dtype == torch.float16:
            raise ValueError(
                f"The SAE's weights are float16 ({name}): Adam's updates overflow and underflow in "
                "float16, and training ends in NaN. Train float32 weights (the default; sae.float()"
                ") or bfloat16 ones (dtype=torch.bfloat16). For mixed-precision speed keep float32 "
                "weights and pass train_sae(..., precision='bf16').")
        if not torch.isfinite(p).all():
            raise ValueError(f"The SAE's {name} already holds NaN/inf before training (e.g. left "
                             "by a run that diverged); training cannot repair it. Build a new SAE.")


def input_scale(sample: Tensor, d_in: int) -> float:
    """s = √d_in / E||x|| for a sample [n, d_in] (float64 if float32 norms overflow)."""
    mean_norm = float(sample.norm(dim=-1).mean())
    if not math.isfinite(mean_norm):  # values near float32's limit: their squares overflow
        mean_norm = float(sample.double().norm(dim=-1).mean())
    if mean_norm == 0:
        raise ValueError("The activations are all zero (in the sample used to normalise them): "
                         "there is nothing to learn. Check the hook or layer they came from.")
    return math.sqrt(d_in) / max(mean_norm, 1e-8)


def training_units(x: Tensor, dtype: torch.dtype, device: torch.device, scale: float,
                    name: str) -> Tensor:
    """A checked batch x [B, d_in] cast to the SAE's dtype and scaled; refuse values that overflow
    there (checked only when x's dtype reaches further, e.g. float64 data for a float32 SAE)."""
    y = x.to(device=device, dtype=dtype) * scale
    if torch.finfo(x.dtype).max > torch.finfo(dtype).max and not torch.isfinite(y).all():
        raise ValueError(f"{name} has values beyond {dtype}'s range (largest |x|: "
                         f"{float(x.abs().max()):.3g}), the SAE's dtype. Scale the activations "
                         "down before training, e.g. x / x.abs().max().")
    return y


def rows_text(n: int) -> str:
    return f"{n:,} row{'s' * (n != 1)}"


def warn(message: str, stacklevel: int) -> None:
    """A TrainingWarning; stacklevel counts from the caller of warn up to train_sae's caller."""
    warnings.warn(message, TrainingWarning, stacklevel=stacklevel + 1)


def step_is_sound(loss: Tensor, grad_norm: Tensor | None, limit: float) -> bool:
    """Loss finite and <= limit, gradient norm finite: one small sync with the device per step."""
    ok = torch.isfinite(loss) & (loss <= limit)
    if grad_norm is not None:
        ok &= torch.isfinite(grad_norm)
    return bool(ok)


def diverged(out, x: Tensor, sae: BaseSAE, *, step: int, tokens: int, scale: float, lr: float,
             limit: float, history) -> TrainingDiverged:
    """The error for a step that failed ``_step_is_sound``: which term, where, and what to try.
    x [B, d_in] is the batch in training units (scaled, in the SAE's dtype)."""
    terms = {name: float(value.detach()) for name, value in out.losses.items()}
    loss = float(out.loss.detach())
    bad = [name for name, value in terms.items() if not math.isfinite(value)]
    if bad:
        what = f"the loss term{'s' * (len(bad) > 1)} {', '.join(bad)} went non-finite"
    elif not math.isfinite(loss):
        what = "the loss (a sum of finite terms) overflowed"
    elif loss > limit:
        what = (f"the loss exploded to {loss:.3g}, over {EXPLODED:.0e} times its first value "
                "(or the data's E||x||²)")
    else:
        what = "the gradient went non-finite (every loss term was finite)"
    dtype = str(sae.W_dec.dtype).removeprefix("torch.")
    largest = float(x.abs().max()) / scale
    tries = [f"checking the activations for huge values (this batch's largest |x| is "
             f"{largest:.3g})"]
    if not torch.isfinite(x.float().pow(2).sum(-1)).all():  # ||x||² overflows: data, not lr
        tries[0] = (f"smaller activations: ||x||² overflows float32 (largest |x| is {largest:.3g}"
                    "); scale them down or keep normalize=True")
    elif step > 0:  # no update has happened at step 0, so the lr cannot be the cause there
        tries.insert(0, f"a lower lr (this run: lr={lr:.3g})")
    if sae.W_dec.dtype != torch.float32:
        tries.append(f"float32 weights instead of {dtype} (sae.float(); for speed, "
                     "train_sae(..., precision='bf16'))")
    terms_text = ", ".join(f"{name}={value:.3g}" for name, value in terms.items())
    return TrainingDiverged(
        f"Training diverged at step {step} (after {tokens:,} tokens): {what} ({terms_text}). "
        "The SAE is not trained (it holds the weights from before this step): do not use or "
        f"save it. Try {'; '.join(tries)}.", step=step, tokens=tokens, losses=terms,
        history=history)
