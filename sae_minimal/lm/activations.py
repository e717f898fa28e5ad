"""Cache a model's activations at one hook to disk, and stream them back shuffled to ``train_sae``.

    store = cache_activations(model, "blocks.2.hook_resid_post", tokens, "cache/resid2")
    history = train_sae(sae, store.batches(batch_size=1024))        # never loads the whole cache

On disk a store is a folder: ``meta.json`` plus shards ``shard_00000.safetensors``
([rows, d_model] each). The forward pass stops right after the hooked layer (``stop_at_layer``), so
no compute is wasted. What the cache promises:

- **Resumable.** Shards are written atomically (temporary name, then rename) and ``meta.json``
  records which token batches each shard holds, so re-running after an interruption (even kill -9)
  continues where it stopped, and a shard deleted or damaged later is rebuilt from its batches.
- **Verified.** Opening a store checks that every shard in ``meta.json`` exists with its recorded
  shape; a damaged store says which shard is wrong and how to rebuild it.
- **Keyed by content.** ``meta.json`` holds the model's weight fingerprint (``models.fingerprint``),
  the hook, a digest of the tokens and the settings; a call that differs in any is refused, so two
  different models that share a name never share a cache.
- **Atomic overwrite.** ``overwrite=True`` builds the new cache in a hidden sibling folder and
  swaps it in with renames: until the new one is complete, the old one stays usable.
- **One writer at a time.** A lock file beside the folder makes a second process wait, then reuse
  what the first one cached.

**BOS.** Position 0 of every window is the BOS token. Its residual-stream norm is many times that
of other positions (it acts as an attention sink), so keeping it would dominate the SAE's loss and
the normalisation scale. ``drop_bos=True`` (default) stores positions 1..context-1 only.

(Over the package's ~250-line guide: caching, resuming, repairing and streaming one store are
read together; the file mechanics they share live in ``cachefiles.py``.)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .cachefiles import (META, file_lock, read_meta, recover_swap, sibling, swap_in,
                         write_meta, write_shard)
from .models import fingerprint, lm_name
from .validate import check_hook, check_tokens, to_model_device

# Settings that decide a cache's content: a cache made with other values is a different cache.
CONTENT_KEYS = ("model", "model_fingerprint", "hook_name", "tokens_sha1", "batch_size", "drop_bos",
                "dtype")


def hook_layer(hook_name: str) -> int:
    """Block index of a transformer-lens hook name like 'blocks.3.hook_resid_post'
    (embed hooks: -1)."""
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    if m:
        return int(m.group(1))
    if hook_name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return -1
    raise ValueError(f"Unrecognised hook name {hook_name!r}: "
                     "expected e.g. 'blocks.3.hook_resid_post'.")


@torch.no_grad()
def run_to_hook(model, tokens: Tensor, hook_name: str) -> Tensor:
    """Activations [batch, pos, d] at ``hook_name``, running the model only as far as that layer.
    tokens: [batch, pos] ids, moved to the model's device."""
    check_hook(model, hook_name)
    tokens = to_model_device(model, check_tokens(model, tokens))
    store = {}

    def grab(act, hook):
        store["act"] = act.detach()

    # hooks after the last block (ln_final, unembed) need the whole forward pass
    after_blocks = not hook_name.startswith("blocks.") and not hook_name.startswith("hook_")
    model.run_with_hooks(tokens, stop_at_layer=None if after_blocks else hook_layer(hook_name) + 1,
                         fwd_hooks=[(hook_name, grab)])
    return store["act"]


def resumes_at(model, hook_name: str) -> int | None:
    """The block the rest of the forward pass starts at when ``hook_name``'s activation is the
    residual stream, so the model can go on from it alone (``run_from_hook``): L + 1 for
    'blocks.L.hook_resid_post', L for 'blocks.L.hook_resid_pre'. None for any other hook, and for
    models whose later blocks need more than the residual (shortformer position embeddings, or a
    left-padding tokenizer, whose attention mask comes from the tokens)."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook_name)
    tokenizer = getattr(model, "tokenizer", None)
    if (m is None or getattr(model.cfg, "positional_embedding_type", "") == "shortformer"
            or getattr(tokenizer, "padding_side", "right") == "left"):
        return None
    return int(m.group(1)) + (m.group(2) == "post")


@torch.no_grad()
def run_from_hook(model, act: Tensor, hook_name: str, tokens: Tensor) -> Tensor:
    """Logits [batch, pos, vocab] of ``tokens`` [batch, pos] with ``act`` [batch, pos, d] as the
    activation at ``hook_name``: only the blocks after the hook run, where ``resumes_at`` allows
    (the layers before it, whose output ``act`` replaces, would be wasted work); otherwise the whole
    model runs with a hook that swaps the activation in. Both give the same logits
    (tests/test_lm.py::test_run_from_hook_equals_replacing_the_activation)."""
    start = resumes_at(model, hook_name)
    if start is None:
        return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda a, hook: act.to(a))])
    return model(act, start_at_layer=start, tokens=tokens)


def _tokens_digest(tokens: Tensor) -> str:
    return hashlib.sha1(tokens.cpu().numpy().tobytes()).hexdigest()[:16]


class _Job(NamedTuple):
    """What produces a cache's rows: batch ``b`` is tokens[b·batch_size : (b+1)·batch_size]."""

    model: object
    hook_name: str
    tokens: Tensor
    batch_size: int
    drop_bos: bool
    dtype: torch.dtype

    def rows(self, b: int) -> Tensor:
        """[batch·pos, d] activations of batch ``b`` (BOS dropped if asked), on the CPU."""
        acts = run_to_hook(self.model, self.tokens[b * self.batch_size:(b + 1) * self.batch_size],
                           self.hook_name)
        if self.drop_bos:
            acts = acts[:, 1:]
        return acts.reshape(-1, acts.shape[-1]).to(self.dtype).cpu()


def cache_activations(model, hook_name: str, tokens: Tensor, path: str | os.PathLike, *,
                      batch_size: int = 32, drop_bos: bool = True,
                      dtype: torch.dtype = torch.float32, shard_rows: int = 65_536,
                      overwrite: bool = False, progress: bool = True) -> "ActivationStore":
    """Run ``model`` on ``tokens`` [n, context] and store the activations at ``hook_name`` under
    ``path``.

    Resumes an interrupted cache of the same (model weights, hook, tokens) and rebuilds shards that
    went missing; refuses to mix with a different one unless ``overwrite=True``, which builds the
    new cache beside the old one and swaps it in only once complete.
    """
    check_hook(model, hook_name)
    check_tokens(model, tokens)
    if batch_size < 1 or shard_rows < 1:
        raise ValueError(f"batch_size and shard_rows must be >= 1, got {batch_size} and "
                         f"{shard_rows}.")
    path = Path(path)
    job = _Job(model, hook_name, tokens, batch_size, drop_bos, dtype)
    meta = {"model": lm_name(model), "model_fingerprint": fingerprint(model),
            "hook_name": hook_name, "d": None, "dtype": str(dtype).removeprefix("torch."),
            "context": int(tokens.shape[1]), "n_windows": int(tokens.shape[0]),
            "drop_bos": drop_bos, "tokens_sha1": _tokens_digest(tokens), "batch_size": batch_size,
            "done_batches": 0, "shards": [], "shard_batches": [], "rows_per_shard": [],
            "n_rows": 0, "complete": False}
    with file_lock(sibling(path, "lock"), f"caching activations into {path}"):
        recover_swap(path)
        old = read_meta(path, corrupt_ok=overwrite)
        if old is None and overwrite and (path / META).exists():
            old = {}                             # unreadable, and to be replaced anyway
        if old is None:                          # a new cache: fill the folder in place
            path.mkdir(parents=True, exist_ok=True)
            _fill(job, path, meta, shard_rows, progress)
        elif not overwrite:                      # the same cache: reuse, repair or resume it
            difference = _difference(old, meta)
            if difference:
                raise FileExistsError(f"{path} already holds a different activation cache: "
                                      f"{difference}. Choose another folder, or pass "
                                      "overwrite=True to replace it.")
            _repair(job, path, old)
            _fill(job, path, old, shard_rows, progress)
        else:                                    # build the replacement beside it, then swap
            staging = sibling(path, "overwrite")
            staged = read_meta(staging, corrupt_ok=True)
            if staged is not None and _difference(staged, meta) is None:
                meta = staged                    # an interrupted overwrite: resume it
                _repair(job, staging, meta)
            else:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            _fill(job, staging, meta, shard_rows, progress)
            swap_in(path, staging, old)
    return ActivationStore(path)


def _fill(job: _Job, path: Path, meta: dict, shard_rows: int, progress: bool) -> None:
    """Run the batches ``meta`` has not done yet, writing a shard every ``shard_rows`` rows."""
    if meta.get("complete"):
        return
    for leftover in path.glob("*.tmp"):          # half-written by a killed run
        leftover.unlink(missing_ok=True)
    n_batches = -(-len(job.tokens) // job.batch_size)
    start = meta["done_batches"]
    buffer: list[Tensor] = []
    first = start                                # the first batch in the buffer

    def flush(done_batches: int) -> None:
        nonlocal buffer, first
        if buffer:
            rows = torch.cat(buffer)
            name = f"shard_{len(meta['shards']):05d}.safetensors"
            write_shard(path / name, rows)
            meta["shards"].append(name)
            meta["shard_batches"].append([first, done_batches])
            meta["rows_per_shard"].append(len(rows))
            meta["n_rows"] += len(rows)
        meta["done_batches"] = done_batches
        write_meta(path, meta)
        buffer, first = [], done_batches

    for b in tqdm(range(start, n_batches), desc=f"caching {job.hook_name}", disable=not progress,
                  unit="batch", initial=start, total=n_batches):
        acts = job.rows(b)                       # [batch·pos, d]
        meta["d"] = acts.shape[-1]
        buffer.append(acts)
        if sum(len(a) for a in buffer) >= shard_rows:
            flush(b + 1)
    flush(n_batches)
    meta["complete"] = True
    write_meta(path, meta)


def _repair(job: _Job, path: Path, meta: dict) -> None:
    """Rebuild every shard of ``meta`` that is missing or damaged, from the batches it holds."""
    for i, problem in _shard_problems(path, meta):
        name = meta["shards"][i]
        if "shard_batches" not in meta:
            raise ValueError(f"{path / name} {problem}, and this cache was made by an older "
                             "sae_minimal that did not record which batches each shard holds. "
                             "Re-cache it with cache_activations(..., overwrite=True).")
        start, end = meta["shard_batches"][i]
        print(f"Rebuilding {path / name} ({problem}) from token batches {start}..{end - 1}.")
        rows = torch.cat([job.rows(b) for b in range(start, end)])
        if len(rows) != meta["rows_per_shard"][i]:
            raise ValueError(f"Rebuilding {name} gave {len(rows)} rows, but {META} records "
                             f"{meta['rows_per_shard'][i]}: the cache at {path} does not match "
                             "these tokens. Re-cache it with overwrite=True.")
        write_shard(path / name, rows)


def _shard_problems(path: Path, meta: dict) -> list[tuple[int, str]]:
    """(index, what is wrong) for each shard listed in ``meta`` that is missing or does not hold
    [recorded rows, d] activations. Reads only the shards' headers."""
    from safetensors import safe_open

    rows = meta.get("rows_per_shard") or [None] * len(meta["shards"])
    problems = []
    for i, (name, n) in enumerate(zip(meta["shards"], rows)):
        file = path / name
        if not file.is_file():
            problems.append((i, "is missing"))
            continue
        try:
            with safe_open(str(file), "pt") as f:
                shape = list(f.get_slice("activations").get_shape())
        except Exception as e:  # noqa: BLE001 -- any unreadable header: the shard is damaged
            problems.append((i, f"is unreadable ({type(e).__name__}: {e})"))
            continue
        if len(shape) != 2 or shape[1] != meta["d"] or (n is not None and shape[0] != n):
            problems.append((i, f"holds shape {shape}, but {META} records "
                                f"[{n if n is not None else 'rows'}, {meta['d']}]"))
    return problems


def _difference(old: dict, new: dict) -> str | None:
    """What makes the cache described by ``old`` differ from the one ``new`` asks for, or None."""
    for key in CONTENT_KEYS:
        if old.get(key) == new[key]:
            continue
        if key == "model_fingerprint" and old.get(key) is None:
            return ("it was made by an older sae_minimal that did not record the model's weights "
                    "(so it cannot tell whether they match)")
        if key == "model_fingerprint":
            return (f"it holds activations of another model with the same name {new['model']!r} "
                    f"(weights fingerprint {old[key]}, this model's is {new[key]})")
        return f"its {key} is {old.get(key)!r}, this call's is {new[key]!r}"
    return None


class ActivationStore:
    """A cached activation folder. ``len(store)`` rows of width ``store.d``; read shard by shard."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / META).is_file():      # perhaps a swap that a crash interrupted
            with file_lock(sibling(self.path, "lock"), f"opening {self.path}"):
                recover_swap(self.path)
        meta = read_meta(self.path)
        if meta is None:
            raise FileNotFoundError(f"No activation cache at {self.path} (missing {META}); "
                                    "create one with "
                                    "cache_activations(model, hook_name, tokens, path).")
        if not meta.get("complete"):
            raise ValueError(f"The cache at {self.path} is incomplete (interrupted?). "
                             "Call cache_activations again "
                             "with the same arguments to resume it.")
        problems = _shard_problems(self.path, meta)
        if problems:
            listed = "; ".join(f"{meta['shards'][i]} {what}" for i, what in problems[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ValueError(f"The activation cache at {self.path} is damaged: {listed}{more}. "
                             "Rebuild it by calling cache_activations(model, "
                             f"{meta['hook_name']!r}, tokens, {str(self.path)!r}) again with the "
                             f"model and the {meta['n_windows']} token windows it was made "
                             "from: only the damaged shards are recomputed.")
        self.meta = meta
        self.d = meta["d"]

    def __len__(self) -> int:
        return self.meta["n_rows"]

    def __repr__(self) -> str:
        m = self.meta
        return (f"ActivationStore({self.path}: {len(self):,} rows x {self.d} "
                f"from {m['model']} at {m['hook_name']}, "
                f"context {m['context']}, BOS {'dropped' if m['drop_bos'] else 'kept'})")

    def shard(self, i: int) -> Tensor:
        """[rows, d] the activations of shard ``i``."""
        from safetensors.torch import load_file

        file = self.path / self.meta["shards"][i]
        try:
            return load_file(str(file))["activations"]
        except Exception as e:  # noqa: BLE001 -- deleted or damaged since the store was opened
            raise ValueError(f"Could not read {file} ({type(e).__name__}: {e}). Rebuild it by "
                             "calling cache_activations again with the model and tokens the "
                             "cache was made from.") from e

    def load_all(self, max_rows: int | None = None) -> Tensor:
        """All (or the first ``max_rows``) activations as one [rows, d] tensor."""
        out, total = [], 0
        for i in range(len(self.meta["shards"])):
            out.append(self.shard(i))
            total += len(out[-1])
            if max_rows is not None and total >= max_rows:
                break
        return torch.cat(out)[:max_rows]

    def batches(self, batch_size: int = 1024, *, n_tokens: int | None = None,
                buffer_rows: int = 131_072, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> Iterator[Tensor]:
        """Shuffled [batch_size, d] batches for ``train_sae``: shards in a random order feed a
        mixing buffer (as in SAELens), so memory stays near ``buffer_rows`` rows however large the
        cache. One pass by default; with ``n_tokens``, cycles over the store until that many rows
        were yielded."""
        if len(self) == 0:
            raise ValueError(f"The cache at {self.path} holds no rows (windows of one token with "
                             "BOS dropped?): there is nothing to train on.")
        gen = torch.Generator().manual_seed(seed)
        target = n_tokens if n_tokens is not None else len(self)
        left = -(-target // batch_size)   # batches still to yield (the last may pass target)
        if len(self) <= buffer_rows:      # the whole store fits in the buffer: read it once and
            yield from self._epochs(batch_size, left, n_tokens is not None, gen, dtype)
            return                        # shuffle it whole each pass (each row once per pass)
        # the buffer's rows, in order, as pieces joined only when full: joining at every shard
        # would copy the buffer once per shard (quadratic when a small store is cycled)
        pieces, n_rows = [torch.empty(0, self.d, dtype=dtype)], 0
        while True:
            for i in torch.randperm(len(self.meta["shards"]), generator=gen).tolist():
                pieces.append(self.shard(i).to(dtype))
                n_rows += len(pieces[-1])
                if n_rows < buffer_rows:
                    continue
                buffer = torch.cat(pieces)
                buffer = buffer[torch.randperm(len(buffer), generator=gen)]
                # the other half mixes with the next shard
                n_out = (len(buffer) // 2) // batch_size * batch_size
                out = _cut(buffer[:n_out], batch_size, left)
                yield from out
                left -= len(out)
                if left == 0:
                    return
                pieces, n_rows = [buffer[n_out:]], len(buffer) - n_out
            if n_tokens is None:
                break
        # one pass: drain the rest of the buffer
        buffer = torch.cat(pieces)
        yield from _cut(buffer[torch.randperm(len(buffer), generator=gen)], batch_size, left)


    def _epochs(self, batch_size: int, left: int, cycle: bool, gen: torch.Generator,
                dtype: torch.dtype) -> Iterator[Tensor]:
        """Up to ``left`` batches of a store that fits in memory: a fresh permutation of all its
        rows per pass; one pass unless ``cycle``. (Through the mixing buffer, a small store's
        next pass would join rows still waiting from the last one, and repeat them.)"""
        rows = torch.cat([self.shard(i).to(dtype) for i in range(len(self.meta["shards"]))])
        while left > 0:
            out = _cut(rows[torch.randperm(len(rows), generator=gen)], batch_size, left)
            yield from out
            left -= len(out)
            if not cycle or not out:      # one pass asked, or fewer rows than one batch
                return


def _cut(rows: Tensor, batch_size: int, limit: int) -> list[Tensor]:
    """rows [n, d] -> at most ``limit`` full batches [batch_size, d] (a partial last one is
    dropped)."""
    return list(rows[:len(rows) // batch_size * batch_size].split(batch_size))[:limit]
