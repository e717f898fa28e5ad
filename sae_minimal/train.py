"""One plain training loop for every SAE variant.

What it does, in order (each step named where it happens below):
  1. normalise activations so E||x|| = √d_in, making hyperparameters transfer across models/layers
     (Conerly et al. 2024; SAELens 'expected_average_only_in'); the scale is folded back into the
     SAE's biases at the end, so the returned SAE works on *raw* activations;
  2. initialise b_dec at the geometric median of a data sample (Bricken et al. 2023;
     Gao et al. 2024);
  3. Adam (β1 = 0.8) at ``default_lr``, which depends on the widths and the run's length, with
     linear LR warmup and a linear decay to 0 over the last ``lr_decay_frac`` of training, and a
     linear warmup of the sparsity coefficient (Conerly et al. 2024);
  4. keep decoder rows unit-norm: remove the gradient's radial part, step, renormalise;
     (4b. optionally, every ``resample_every`` tokens, resample dead latents: resampling.py);
  5. log loss terms, FVU, L0 and the dead fraction to a ``History`` ready to plot.

Nothing returns garbage without a word (the checks live in ``guards.py``): settings that cannot
train are refused before anything changes, a loss that goes non-finite or explodes stops training
with ``TrainingDiverged``, and data that runs out or comes in batches far from ``batch_size`` gives
a ``TrainingWarning``.

(Slightly over the package's ~250-line guide: the loop reads top to bottom in one function, with
its data preparation beside it; the checks are in ``guards.py``.)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .base import BaseSAE, check_activations
from .guards import (EXPLODED, TrainingDiverged, TrainingWarning, check_sae, check_settings,
                     diverged, input_scale, rows_text, step_is_sound, training_units, warn)
from . import resume
from .metrics import fvu
from .resampling import resample_dead_latents

T = TypeVar("T")


class History(dict):
    """Training curves: a dict of equal-length lists ("step", "tokens", "loss", "mse", "fvu", "l0",
    "dead_frac", "lr", one entry per loss term), plus floats "input_scale", "seconds" (wall time of
    the loop) and "data_seconds" (of which spent waiting for the next batch: the data path), and,
    when training resampled dead latents, "resampled": [tokens, latents resampled] pairs."""

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


def _batches(x: Tensor, batch_size: int, seed: int, skip: int = 0) -> Iterator[Tensor]:
    """Shuffled epochs over x [N, d_in], forever: [batch_size, d_in] batches (batch_size <= N),
    from the ``skip``-th on (a resumed run: the same order as if the first ``skip`` were read)."""
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    per_epoch = n // batch_size
    for _ in range(skip // per_epoch):   # epochs already done: only their shuffles are drawn
        torch.randperm(n, generator=gen)
    skip %= per_epoch
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(skip * batch_size, n - batch_size + 1, batch_size):
            yield x[perm[i:i + batch_size]]
        skip = 0


def _lr_factor(step: float, n_steps: int, warmup: int, decay_frac: float) -> float:
    """LR multiplier at ``step`` (steps' worth of tokens done: tokens / rows per step)."""
    if step < warmup:
        return min(1.0, (step + 1) / warmup)  # min: a fractional step may pass warmup - 1
    decay_start = int(n_steps * (1 - decay_frac))
    if decay_frac > 0 and step >= decay_start:
        return max(0.0, (n_steps - step) / max(1, n_steps - decay_start))
    return 1.0


def default_lr(d_in: int, d_sae: int, n_steps: int | None = None) -> float:
    """Adam learning rate for an SAE of d_in -> d_sae trained for ``n_steps`` steps:

        lr = min(1/8, max(2e-4 · √(16384 / d_sae) · √768,  1.25 / √n_steps)) / √max(d_in, 64)

    The first term is Gao et al.'s rule for long runs (2024, sec. 2.4: best LR ∝ 1/√d_sae, 2e-4
    at 16384 latents on GPT-2, whose d_in is 768), carried to other widths: Adam moves every
    weight by about lr per step, and with unit-norm decoder rows the entries are ~1/√d_in in
    size, so an equal relative step needs lr ∝ 1/√d_in. Runs far shorter than theirs learn
    fastest at a larger rate, ∝ 1/√n_steps (on the stand-in, d_in 256, 2048 latents: best near
    2e-3 at 1,562 steps, 5.7e-3 at 196, 1.6e-2 at 49): the second term, which wins below about
    6,000 steps at 256 x 2048 and 80,000 at GPT-2's 768 x 24576. Both are capped at 1/(8·√d_in),
    a step that moves a decoder row by 1/8 of its length: at twice that, short runs lost up to
    2.7x in FVU and a third of their latents died. Below d_in = 64 (not measured) the rate stays
    at its d_in = 64 value. ``n_steps`` None (an unknown budget): the long-run rule.
    Measurements: ``benchmarks/bench_tokens_to_fvu.py`` and the README.
    """
    rate = 2e-4 * math.sqrt(16384 / d_sae) * math.sqrt(768)   # times 1/√d_in, as both terms
    if n_steps is not None:
        rate = max(rate, 1.25 / math.sqrt(max(1, n_steps)))
    return min(1 / 8, rate) / math.sqrt(max(d_in, 64))    # not measured below d_in = 64


def make_adam(params, **kw) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch build has it (one pass over each parameter's
    state instead of several: measurably faster for large dictionaries), the default
    implementation otherwise."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kw)


def _prepare(sae: BaseSAE, activations: Tensor | Iterable[Tensor], batch_size: int,
             seed: int, skip: int = 0) -> tuple[Iterator[Tensor], Tensor, int, int | None]:
    """Check the data; return (batches, from the ``skip``-th on, a sample [n, d_in] for the scale
    and b_dec, rows per step the schedules count, default n_tokens)."""
    if isinstance(activations, Tensor):
        x = check_activations(activations, sae.d_in, name="activations").reshape(-1, sae.d_in)
        rows = min(batch_size, x.shape[0])  # the batches _batches really yields
        if rows < batch_size:
            warn(f"batch_size={batch_size} is larger than the {rows} rows of activations: every "
                  f"step trains on all {rows} rows (the LR schedule counts those steps). Pass "
                  f"batch_size <= {rows}, or more activations.", 3)
        sample = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:8192]]
        return _batches(x, rows, seed, skip), sample, rows, x.shape[0]
    stream = iter(activations)
    head, n = [], 0  # the first batches, until they hold enough rows for the sample
    while n < min(batch_size, 8192) and (batch := next(stream, None)) is not None:
        name = f"batch {len(head)}" if head else "the first batch of activations"
        head.append(check_activations(batch, sae.d_in, name=name).reshape(-1, sae.d_in))
        n += head[-1].shape[0]
    if not head:
        raise ValueError("activations is an empty iterable: there is nothing to train on.")
    if head[0].shape[0] < batch_size // 2:
        warn(f"The activations iterator yields batches of {rows_text(head[0].shape[0])}, but "
              f"batch_size={batch_size}: each Adam step sees {rows_text(head[0].shape[0])}, "
              "noisier "
              "than the learning rate assumes (the LR and sparsity schedules count tokens, so "
              f"they still span n_tokens). Pass batch_size={head[0].shape[0]}, or yield batches "
              "of batch_size rows (e.g. x.split(batch_size)).", 3)
    sample = head[0] if len(head) == 1 else torch.cat([h.to(head[0].device) for h in head])
    return itertools.chain(head, stream), sample, batch_size, None


class _ReadAhead:
    """The batches of an iterator, read ``depth`` ahead by a background thread, so the next batch
    is being read (an activation store reads and shuffles shards from disk) while this one trains.
    Same batches in the same order; an exception raised by the iterator is raised here, at the
    batch where it happened. ``close()`` stops the thread (an endless iterator's too)."""

    def __init__(self, stream: Iterator[Tensor], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop, self._done = threading.Event(), False
        self._thread = threading.Thread(target=self._fill, args=(stream,), daemon=True)
        self._thread.start()

    def _fill(self, stream: Iterator[Tensor]) -> None:
        try:
            for item in stream:
                if not self._put(("batch", item)):
                    return
            self._put(("end", None))
        except BaseException as e:  # noqa: BLE001 -- handed to the training thread, raised there
            self._put(("error", e))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "batch":
            return value
        self._done = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self._stop.set()


def train_sae(sae: BaseSAE, activations: Tensor | Iterable[Tensor], *, n_tokens: int | None = None,
              batch_size: int = 1024, lr: float | None = None,
              betas: tuple[float, float] = (0.8, 0.999), lr_warmup_steps: int | None = None,
              lr_decay_frac: float = 0.2, sparsity_warmup_frac: float = 0.05,
              normalize: bool = True, b_dec_init: str = "geometric_median",
              grad_clip: float | None = 1.0, dead_window: int | None = None,
              log_every: int | None = None, seed: int = 0, progress: bool = True,
              device: str | torch.device | None = None, precision: str = "fp32",
              resample_every: int | None = None, resample_until: float = 0.5,
              checkpoint: str | os.PathLike | None = None,
              checkpoint_every: float = 300.0) -> History:
    """Train ``sae`` in place and return its training History.

    Args:
        activations: a tensor [N, d_in] (any leading dims; shuffled each epoch) or an iterable of
                     [batch, d_in] tensors (e.g. ``sae_minimal.lm.activations``'s shuffling buffer).
        n_tokens:    training tokens; default one pass over a tensor, or the whole iterable. The LR
                     and sparsity schedules count tokens in steps of batch_size rows (of N rows
                     when batch_size > N), so with an iterator pass its batch size too.
        lr:          Adam learning rate; default ``default_lr(d_in, d_sae, n_steps)`` for this
                     run's steps (``n_tokens / batch_size``), which grows as runs get shorter.
        betas:       Adam's (β1, β2). β1 = 0.8 rather than the usual 0.9: momentum over ~5 steps,
                     not 10, learns faster in short runs (held-out FVU 0.24 vs 0.30 after 49 steps,
                     0.209 vs 0.222 on the stand-in) and was no worse at 586 steps (0.119 vs 0.120).
        normalize:   train on x·s with s = √d_in / E||x||; s is folded into the SAE at the end.
        b_dec_init:  "geometric_median", "mean" or "zeros" (skipped when continuing training).
        dead_window: tokens without firing after which a latent counts as dead in the History
                     (default: the SAE's own ``dead_window``).
        log_every:   steps between the History's rows (default: n_steps / 200), plus a row at
                     each power of two before the first (a log-axis curve's first tokens).
        seed:        seeds the shuffling, so two runs with the same seed see the same batches.
        precision:   "fp32", or "bf16": the forward and backward passes run under bfloat16
                     autocast (matmuls in bfloat16), while the weights, their gradients and
                     Adam's state stay float32. For GPUs with tensor cores; off by default, as
                     on a CPU it gains nothing (TopK 256 x 2048 on 2 AVX-512 cores: 3.0 s vs
                     3.1 s for 40 steps).
        resample_every: every this many training tokens, during the first ``resample_until``
                     fraction of training, resample the latents dead by ``dead_window``
                     (Bricken et al. 2023; ``resampling.resample_dead_latents``). None: never
                     (AuxK, where the variant has it, revives latents instead). The History's
                     "resampled" holds one [tokens, latents resampled] pair per resampling.
        checkpoint:  a file to save the run's state to every ``checkpoint_every`` seconds (and to
                     resume from: a call with the same SAE, tensor of activations and settings
                     goes on where the saved run was, and ends with the SAE an uninterrupted run
                     gives). Removed when training finishes. ``resume.py`` says more.

    Settings that cannot train (NaN, n_tokens=0, float16 weights, ...) raise ValueError at once.
    A loss term or gradient that goes non-finite, or a loss that explodes, stops training with
    ``TrainingDiverged``; data that runs out before n_tokens, or batches far from batch_size, give
    a ``TrainingWarning``.
    """
    settings = dict(
        n_tokens=n_tokens, batch_size=batch_size, lr=lr, betas=betas,
        lr_warmup_steps=lr_warmup_steps, lr_decay_frac=lr_decay_frac,
        sparsity_warmup_frac=sparsity_warmup_frac, b_dec_init=b_dec_init, grad_clip=grad_clip,
        dead_window=dead_window, log_every=log_every, seed=seed, precision=precision,
        resample_every=resample_every, resample_until=resample_until)
    n_tokens = check_settings(**settings, checkpoint_every=checkpoint_every)
    check_sae(sae)
    saved = None
    if checkpoint is not None:
        if not isinstance(activations, Tensor):
            raise ValueError("checkpoint= needs the activations as one tensor [N, d_in], whose "
                             "batches a resumed run can draw again in the same order; an "
                             "iterator's cannot be replayed. Pass a tensor, or checkpoint=None.")
        run_key = resume.fingerprint(sae, activations,
                                     {**settings, "n_tokens": n_tokens, "normalize": normalize})
        saved = resume.load(checkpoint, run_key)
    device = torch.device(device) if device is not None else sae.W_dec.device
    sae.to(device)
    stream, sample, rows, n_data = _prepare(sae, activations, batch_size, seed,
                                            skip=saved["step"] if saved else 0)
    n_tokens = n_tokens or n_data
    sample = training_units(sample, torch.float32, device, 1.0, "the activations sample")

    # 1. normalisation scale s: the SAE is trained on s·x
    scale = input_scale(sample, sae.d_in) if normalize else 1.0
    sample = sample * scale  # in training units from here on
    continuing = sae.trained_tokens > 0
    if saved is not None:  # a resumed run: the SAE as saved, in training units
        resume.restore_sae(sae, saved["sae"])
    elif continuing:
        sae.fold_input_scale(1.0 / scale)  # back to normalised units
    elif b_dec_init != "zeros":  # 2. b_dec
        centre = (geometric_median(sample) if b_dec_init == "geometric_median"
                  else sample.mean(0))
        with torch.no_grad():
            sae.b_dec.copy_(centre)

    n_steps = math.ceil(n_tokens / rows) if n_tokens is not None else None
    lr = lr if lr is not None else default_lr(sae.d_in, sae.d_sae, n_steps)
    warmup = (lr_warmup_steps if lr_warmup_steps is not None
              else min(1000, max(1, (n_steps or 10_000) // 20)))
    sparsity_warmup_steps = max(1, int((n_steps or 10_000) * sparsity_warmup_frac))
    log_every = log_every or max(1, (n_steps or 1000) // 200)
    dead_window = dead_window or sae.dead_window
    opt = make_adam(sae.parameters(), lr=lr, betas=betas)
    # bf16: autocast casts each matmul's inputs to bfloat16 (master weights stay float32); the
    # loss terms come out float32 (x is float32), and autograd casts every gradient back to its
    # parameter's dtype
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    history = History(input_scale=scale)
    if resample_every:
        history["resampled"], next_resample = [], resample_every
        resample_gen = torch.Generator().manual_seed(seed)
    # a loss above limit means training diverged (set after step 0; see EXPLODED)
    limit, x_sq = math.inf, float(sample.pow(2).sum(-1).mean())
    tokens, step, data_seconds, seconds_before = 0, 0, 0.0, 0.0
    if saved is not None:
        opt.load_state_dict(saved["opt"])
        history.update(saved["history"])
        tokens, step, limit = saved["tokens"], saved["step"], saved["limit"]
        data_seconds, seconds_before = saved["data_seconds"], saved["seconds"]
        if resample_every:
            next_resample = saved["next_resample"]
            resample_gen.set_state(saved["resample_gen"])
    sae.train()

    bar = tqdm(total=n_steps, initial=step, disable=not progress,
               desc=f"training {type(sae).__name__}", unit="step")
    t_start = last_save = time.perf_counter()
    if not isinstance(activations, Tensor):   # an iterator may read from disk: read ahead
        stream = _ReadAhead(stream)
    try:
        # count tokens: an iterator's batches may differ in size
        while n_tokens is None or tokens < n_tokens:
            t_fetch = time.perf_counter()
            batch = next(stream, None)
            data_seconds += time.perf_counter() - t_fetch
            if batch is None:
                break
            name = f"batch {step} (after {tokens:,} training tokens)"
            x = check_activations(batch, sae.d_in, name=name).reshape(-1, sae.d_in)
            x = training_units(x, sae.W_dec.dtype, device, scale, name)
            # 3. schedules, in steps' worth of tokens: right even when batches differ in size
            done = tokens / rows
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(done, n_steps or 10**12, warmup,
                                              lr_decay_frac if n_steps else 0)
            sae.sparsity_warmup = min(1.0, (done + 1) / sparsity_warmup_steps)

            with autocast:
                out = sae(x)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if sae.unit_norm_decoder:  # 4. unit-norm decoder
                sae.remove_parallel_decoder_grad()
            grad_norm = (torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
                         if grad_clip else None)
            if not step_is_sound(out.loss, grad_norm, limit):  # before the step can spoil weights
                raise diverged(out, x, sae, step=step, tokens=tokens, scale=scale, lr=lr,
                               limit=limit, history=history)
            if step == 0:
                limit = EXPLODED * max(float(out.loss.detach()), x_sq)
            opt.step()
            if sae.unit_norm_decoder:
                sae.normalize_decoder()

            tokens += x.shape[0]
            step += 1
            if resample_every and tokens >= next_resample:  # 4b. dead-latent resampling
                next_resample += resample_every
                if n_tokens is None or tokens <= resample_until * n_tokens:
                    revived = resample_dead_latents(sae, sample, sae.dead_mask(dead_window),
                                                    opt, generator=resample_gen)
                    history["resampled"].append([tokens, int(revived.numel())])
            # 5. history: every log_every steps, and at each power of two before the first of
            # them, so that a long run's curve on a log axis starts at its first batches (a 128M-
            # token run logs every 625 steps: 640k tokens, more than a whole short run)
            if step % log_every == 0 or step == n_steps or (step < log_every
                                                             and step & (step - 1) == 0):
                _log(history, step, tokens, out, x, sae, dead_window, opt.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{history['loss'][-1]:.3g}", fvu=f"{history['fvu'][-1]:.3f}",
                                l0=f"{history['l0'][-1]:.1f}", refresh=False)
            bar.update(1)
            if checkpoint is not None and time.perf_counter() - last_save >= checkpoint_every \
                    and (n_steps is None or step < n_steps):
                resume.save(checkpoint, {
                    "fingerprint": run_key, "sae": resume.sae_state(sae), "opt": opt.state_dict(),
                    "step": step, "tokens": tokens, "limit": limit, "history": dict(history),
                    "data_seconds": data_seconds,
                    "seconds": seconds_before + time.perf_counter() - t_start,
                    **({"next_resample": next_resample,
                        "resample_gen": resample_gen.get_state()} if resample_every else {})})
                last_save = time.perf_counter()
        if 0 < tokens < (n_tokens or 0):
            warn(f"The activations ran out after {tokens:,} of the n_tokens={n_tokens:,} tokens "
                  f"asked ({step} steps): the LR schedule assumed all {n_tokens:,}, so its "
                  "decay never finished and the SAE is under-trained. Pass "
                  f"n_tokens={tokens}, or activations that last (store.batches(batch_size, "
                  "n_tokens=n_tokens) cycles over its store).", 2)
        if step > 0:
            # e.g. BatchTopK: θ from the final weights
            sae.after_training(sample, rows)
        if checkpoint is not None:  # finished: nothing left to resume
            Path(checkpoint).unlink(missing_ok=True)
    finally:  # even on KeyboardInterrupt, hand back an SAE that works on raw activations
        bar.close()
        if isinstance(stream, _ReadAhead):
            stream.close()
        history["seconds"] = seconds_before + time.perf_counter() - t_start
        history["data_seconds"] = data_seconds  # time spent waiting for batches (the data path)
        sae.fold_input_scale(scale)
        sae.trained_tokens += tokens
        sae.sparsity_warmup = 1.0
        sae.eval()
    if step == 0:
        raise ValueError("No training step ran: the activations produced no batch.")
    return history


def train_concurrently(jobs: Sequence[Callable[[], T]], *, workers: int | None = None,
                       desc: str | None = None) -> list[T]:
    """[job() for job in jobs], run ``workers`` at a time in threads that share the process's
    torch threads (each gets ``torch.get_num_threads() // workers``); results in the jobs' order.

    Why: a small SAE's training step does not keep two cores busy (topk, sorting, the optimizer
    and Python run on one), so two SAEs trained side by side on one thread each finish sooner than
    one after the other on two threads: 1.22-1.44x on the 2-core CI machine for 256 x 2048 SAEs
    (``benchmarks/bench_train.py --concurrent``), with bit-identical weights (tests/test_train.py).
    Independent jobs only: each must use its own generators (``seed=``), never the global one.
    ``workers`` defaults to 2 when torch has 2+ threads, else 1 (then the jobs run one after the
    other, here).
    Jobs queued when one fails or on Ctrl-C are cancelled; the running ones finish first.
    """
    jobs = list(jobs)
    threads = torch.get_num_threads()
    workers = min(workers or (2 if threads >= 2 else 1), len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, disable=desc is None or len(jobs) < 2)
    if workers <= 1:
        out = []
        for job in jobs:
            out.append(job())
            bar.update()
        bar.close()
        return out
    torch.set_num_threads(max(threads // workers, 1))   # read by each new thread when it starts
    pool = ThreadPoolExecutor(workers, thread_name_prefix="train_concurrently")
    try:
        futures = [pool.submit(job) for job in jobs]
        for _ in as_completed(futures):
            bar.update()
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
        bar.close()


@torch.no_grad()
def _log(history: History, step: int, tokens: int, out, x: Tensor, sae: BaseSAE,
         dead_window: int, lr: float) -> None:
    row = {"step": step, "tokens": tokens, "loss": float(out.loss), "lr": lr,
           "fvu": fvu(x, out.x_hat) if x.shape[0] > 1 else float("nan"), "l0": out.l0(),
           "dead_frac": float(sae.dead_mask(dead_window).float().mean())}
    row.update({name: float(value) for name, value in out.losses.items()})
    for key, value in row.items():
        history.setdefault(key, []).append(value)


__all__ = ["train_sae", "train_concurrently", "History", "TrainingDiverged", "TrainingWarning",
           "default_lr", "geometric_median", "make_adam"]
