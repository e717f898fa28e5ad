"""One plain training loop for every SAE variant.

What it does, in order (each step named where it happens below):
  1. normalise activations so E||x|| = √d_in, making hyperparameters transfer across models/layers
     (Conerly et al. 2024; SAELens 'expected_average_only_in'); the scale is folded back into the
     SAE's biases at the end, so the returned SAE works on *raw* activations;
  2. initialise b_dec at the geometric median of a data sample (Bricken et al. 2023;
     Gao et al. 2024);
  3. Adam with linear LR warmup and a linear decay to 0 over the last ``lr_decay_frac`` of training,
     and a linear warmup of the sparsity coefficient (Conerly et al. 2024);
  4. keep decoder rows unit-norm: remove the gradient's radial part, step, renormalise;
  5. log loss terms, FVU, L0 and the dead fraction to a ``History`` ready to plot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .base import BaseSAE, check_activations
from .metrics import fvu, l0


class History(dict):
    """Training curves: a dict of equal-length lists ("step", "tokens", "loss", "mse", "fvu", "l0",
    "dead_frac", "lr", one entry per loss term), plus floats "input_scale", "seconds" (wall time of
    the loop) and "data_seconds" (of which spent waiting for the next batch: the data path)."""

    def plot(self, keys: tuple[str, ...] = ("loss", "fvu", "l0", "dead_frac"), ax=None):
        """One small panel per key against tokens seen. Returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        keys = [k for k in keys if k in self]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
        for a, key in zip(axes[0], keys):
            a.plot(self["tokens"], self[key])
            a.set_xlabel("training tokens")
            a.set_title(key)
            if key in ("loss", "mse", "fvu") and min(self[key]) > 0:
                a.set_yscale("log")
        fig.tight_layout()
        return fig


@torch.no_grad()
def geometric_median(x: Tensor, n_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """Point minimising Σ_i ||x_i - m|| for x [N, d] (Weiszfeld's algorithm). Robust to outliers,
    unlike the mean, which matters for residual streams with a few huge-norm tokens."""
    m = x.mean(dim=0)
    for _ in range(n_iter):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(1e-8)
        m_new = (w[:, None] * x).sum(dim=0) / w.sum()
        if (m_new - m).norm() <= tol * m.norm().clamp_min(1.0):
            return m_new
        m = m_new
    return m


def _batches(activations: Tensor | Iterable[Tensor], batch_size: int,
             seed: int) -> Iterator[Tensor]:
    """Yield [batch_size, d_in] batches: shuffled epochs over a tensor, or the iterable's own
    batches."""
    if isinstance(activations, Tensor):
        gen = torch.Generator().manual_seed(seed)
        n = activations.shape[0]
        while True:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                yield activations[perm[i:i + batch_size]]
    else:
        for batch in activations:
            yield batch


def _chain(first: Tensor, rest: Iterator[Tensor]) -> Iterator[Tensor]:
    yield first
    yield from rest


def _lr_factor(step: int, n_steps: int, warmup: int, decay_frac: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    decay_start = int(n_steps * (1 - decay_frac))
    if decay_frac > 0 and step >= decay_start:
        return max(0.0, (n_steps - step) / max(1, n_steps - decay_start))
    return 1.0


def default_lr(d_sae: int) -> float:
    """Gao et al. (2024, sec. 2.4) found the best LR scales as 1/√d_sae: 2e-4 at d_sae = 16384.
    Capped at 4e-3 for the tiny dictionaries of the toy notebooks."""
    return min(4e-3, 2e-4 * math.sqrt(16384 / d_sae))


def make_adam(params, **kw) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch build has it (one pass over each parameter's
    state instead of several: measurably faster for large dictionaries), the default
    implementation otherwise."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kw)


def train_sae(sae: BaseSAE, activations: Tensor | Iterable[Tensor], *, n_tokens: int | None = None,
              batch_size: int = 1024, lr: float | None = None,
              betas: tuple[float, float] = (0.9, 0.999), lr_warmup_steps: int | None = None,
              lr_decay_frac: float = 0.2, sparsity_warmup_frac: float = 0.05,
              normalize: bool = True, b_dec_init: str = "geometric_median",
              grad_clip: float | None = 1.0, dead_window: int | None = None,
              log_every: int | None = None, seed: int = 0, progress: bool = True,
              device: str | torch.device | None = None) -> History:
    """Train ``sae`` in place and return its training History.

    Args:
        activations: a tensor [N, d_in] (any leading dims; shuffled each epoch) or an iterable of
                     [batch, d_in] tensors (e.g. ``sae_minimal.lm.activations``'s shuffling buffer).
        n_tokens:    training tokens; default one pass over a tensor, or the whole iterable. The LR
                     schedule assumes n_tokens / batch_size steps, so with an iterator pass its
                     batch size too.
        lr:          Adam learning rate; default ``default_lr(d_sae)``.
        normalize:   train on x·s with s = √d_in / E||x||; s is folded into the SAE at the end.
        b_dec_init:  "geometric_median", "mean" or "zeros" (skipped when continuing training).
        dead_window: tokens without firing after which a latent counts as dead in the History
                     (default: the SAE's own ``dead_window``).
        seed:        seeds the shuffling, so two runs with the same seed see the same batches.
    """
    if b_dec_init not in ("geometric_median", "mean", "zeros"):
        raise ValueError("b_dec_init must be 'geometric_median', 'mean' or 'zeros', "
                         f"got {b_dec_init!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    device = torch.device(device) if device is not None else sae.W_dec.device
    sae.to(device)

    if isinstance(activations, Tensor):
        activations = check_activations(activations, sae.d_in,
                                        name="activations").reshape(-1, sae.d_in)
        n_tokens = n_tokens or activations.shape[0]
        sample = activations[torch.randperm(activations.shape[0],
                                            generator=torch.Generator().manual_seed(seed))[:8192]]
        stream = _batches(activations, min(batch_size, activations.shape[0]), seed)
    else:
        stream = iter(activations)
        first = next(stream, None)
        if first is None:
            raise ValueError("activations is an empty iterable: there is nothing to train on.")
        sample = check_activations(first, sae.d_in,
                                   name="the first batch of activations").reshape(-1, sae.d_in)
        stream = _chain(sample, stream)
    if n_tokens is not None and n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}.")
    sample = sample.to(device=device, dtype=torch.float32)

    # 1. normalisation scale s: the SAE is trained on s·x
    scale = (math.sqrt(sae.d_in) / float(sample.norm(dim=-1).mean().clamp_min(1e-8))
             if normalize else 1.0)
    continuing = sae.trained_tokens > 0
    if continuing:
        sae.fold_input_scale(1.0 / scale)  # back to normalised units
    elif b_dec_init != "zeros":  # 2. b_dec
        centre = (geometric_median(sample * scale) if b_dec_init == "geometric_median"
                  else (sample * scale).mean(0))
        with torch.no_grad():
            sae.b_dec.copy_(centre)

    n_steps = math.ceil(n_tokens / batch_size) if n_tokens is not None else None
    lr = lr if lr is not None else default_lr(sae.d_sae)
    warmup = (lr_warmup_steps if lr_warmup_steps is not None
              else min(1000, max(1, (n_steps or 10_000) // 20)))
    sparsity_warmup_steps = max(1, int((n_steps or 10_000) * sparsity_warmup_frac))
    log_every = log_every or max(1, (n_steps or 1000) // 200)
    dead_window = dead_window or sae.dead_window
    opt = make_adam(sae.parameters(), lr=lr, betas=betas)
    history = History(input_scale=scale)
    sae.train()

    bar = tqdm(total=n_steps, disable=not progress, desc=f"training {type(sae).__name__}",
               unit="step")
    tokens, step, data_seconds, t_start = 0, 0, 0.0, time.perf_counter()
    try:
        # count tokens: an iterator's batches may differ in size
        while n_tokens is None or tokens < n_tokens:
            t_fetch = time.perf_counter()
            batch = next(stream, None)
            data_seconds += time.perf_counter() - t_fetch
            if batch is None:
                break
            x = check_activations(batch, sae.d_in, name=f"batch {step}").reshape(-1, sae.d_in)
            x = x.to(device=device, dtype=sae.W_dec.dtype) * scale
            # 3. schedules
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(step, n_steps or 10**12, warmup,
                                              lr_decay_frac if n_steps else 0)
            sae.sparsity_warmup = min(1.0, (step + 1) / sparsity_warmup_steps)

            out = sae(x)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if sae.unit_norm_decoder:  # 4. unit-norm decoder
                sae.remove_parallel_decoder_grad()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
            opt.step()
            if sae.unit_norm_decoder:
                sae.normalize_decoder()

            tokens += x.shape[0]
            step += 1
            if step % log_every == 0 or step == n_steps:  # 5. history
                _log(history, step, tokens, out, x, sae, dead_window, opt.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{history['loss'][-1]:.3g}", fvu=f"{history['fvu'][-1]:.3f}",
                                l0=f"{history['l0'][-1]:.1f}", refresh=False)
            bar.update(1)
        if step > 0:
            # e.g. BatchTopK: θ from the final weights
            sae.after_training(sample * scale, batch_size)
    finally:  # even on KeyboardInterrupt, hand back an SAE that works on raw activations
        bar.close()
        history["seconds"] = time.perf_counter() - t_start
        history["data_seconds"] = data_seconds  # time spent waiting for batches (the data path)
        sae.fold_input_scale(scale)
        sae.trained_tokens += tokens
        sae.sparsity_warmup = 1.0
        sae.eval()
    if step == 0:
        raise ValueError("No training step ran: the activations produced no batch.")
    return history


@torch.no_grad()
def _log(history: History, step: int, tokens: int, out, x: Tensor, sae: BaseSAE, dead_window: int,
         lr: float) -> None:
    row = {"step": step, "tokens": tokens, "loss": float(out.loss), "lr": lr,
           "fvu": fvu(x, out.x_hat) if x.shape[0] > 1 else float("nan"), "l0": l0(out.latents),
           "dead_frac": float(sae.dead_mask(dead_window).float().mean())}
    row.update({name: float(value) for name, value in out.losses.items()})
    for key, value in row.items():
        history.setdefault(key, []).append(value)
