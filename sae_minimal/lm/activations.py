"""Cache a model's activations at one hook to disk, and stream them back shuffled to ``train_sae``.

    store = cache_activations(model, "blocks.2.hook_resid_post", tokens, "cache/resid2")
    history = train_sae(sae, store.batches(batch_size=1024))        # never loads the whole cache

On disk a store is a folder: ``meta.json`` plus shards ``shard_00000.safetensors``
([rows, d_model] each). Caching is **resumable**: shards are written atomically (temporary name,
then rename) and ``meta.json`` records which token batches are done, so re-running after an
interruption continues where it stopped. The forward pass stops right after the hooked layer
(``stop_at_layer``), so no compute is wasted.

**BOS.** Position 0 of every window is the BOS token. Its residual-stream norm is many times that
of other positions (it acts as an attention sink), so keeping it would dominate the SAE's loss and
the normalisation scale. ``drop_bos=True`` (default) stores positions 1..context-1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .models import lm_name

META = "meta.json"


def hook_layer(hook_name: str) -> int:
    """Block index of a transformer-lens hook name like 'blocks.3.hook_resid_post'
    (embed hooks: -1)."""
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    if m:
        return int(m.group(1))
    if hook_name in ("hook_embed", "hook_pos_embed"):
        return -1
    raise ValueError(f"Unrecognised hook name {hook_name!r}: "
                     "expected e.g. 'blocks.3.hook_resid_post'.")


@torch.no_grad()
def run_to_hook(model, tokens: Tensor, hook_name: str) -> Tensor:
    """Activations [batch, pos, d] at ``hook_name``, running the model only as far as that layer."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"{hook_name!r} is not a hook of this model; "
                         "e.g. 'blocks.0.hook_resid_post'. "
                         f"Available: {', '.join(list(model.hook_dict)[:6])}, ...")
    store = {}

    def grab(act, hook):
        store["act"] = act.detach()

    model.run_with_hooks(tokens, stop_at_layer=hook_layer(hook_name) + 1,
                         fwd_hooks=[(hook_name, grab)])
    return store["act"]


def _tokens_digest(tokens: Tensor) -> str:
    return hashlib.sha1(tokens.cpu().numpy().tobytes()).hexdigest()[:16]


def cache_activations(model, hook_name: str, tokens: Tensor, path: str | os.PathLike, *,
                      batch_size: int = 32, drop_bos: bool = True,
                      dtype: torch.dtype = torch.float32, shard_rows: int = 65_536,
                      overwrite: bool = False, progress: bool = True) -> "ActivationStore":
    """Run ``model`` on ``tokens`` [n, context] and store the activations at ``hook_name`` under
    ``path``.

    Resumes an interrupted cache of the same (model, hook, tokens); refuses to mix with a different
    one unless ``overwrite=True`` (which deletes the old shards first).
    """
    from safetensors.torch import save_file

    if tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError("tokens must be an integer tensor [n_windows, context], "
                         f"got {tuple(tokens.shape)} {tokens.dtype}.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"model": lm_name(model), "hook_name": hook_name, "d": None,
            "dtype": str(dtype).removeprefix("torch."), "context": int(tokens.shape[1]),
            "n_windows": int(tokens.shape[0]),
            "drop_bos": drop_bos, "tokens_sha1": _tokens_digest(tokens), "batch_size": batch_size,
            "done_batches": 0, "shards": [], "n_rows": 0, "complete": False}
    old = _read_meta(path)
    if old is not None:
        same = all(old.get(k) == meta[k] for k in ("model", "hook_name", "tokens_sha1",
                                                   "batch_size", "drop_bos", "dtype"))
        if same and not overwrite:
            if old.get("complete"):
                return ActivationStore(path)
            meta = old  # an interrupted run of the same cache: resume it
        elif not overwrite:
            raise FileExistsError(f"{path} already holds a different activation cache "
                                  f"({old.get('model')}, {old.get('hook_name')}). "
                                  "Choose another folder or pass overwrite=True.")
        else:
            for shard in old.get("shards", []):
                (path / shard).unlink(missing_ok=True)
    n_batches = -(-tokens.shape[0] // batch_size)
    buffer: list[Tensor] = []
    rows_in_buffer = 0
    start = meta["done_batches"]

    def flush(done_batches: int) -> None:
        nonlocal buffer, rows_in_buffer
        if buffer:
            name = f"shard_{len(meta['shards']):05d}.safetensors"
            save_file({"activations": torch.cat(buffer).contiguous()}, str(path / (name + ".tmp")))
            os.replace(path / (name + ".tmp"), path / name)
            meta["shards"].append(name)
            meta["n_rows"] += rows_in_buffer
        meta["done_batches"] = done_batches
        _write_meta(path, meta)
        buffer, rows_in_buffer = [], 0

    for b in tqdm(range(start, n_batches), desc=f"caching {hook_name}", disable=not progress,
                  unit="batch", initial=start, total=n_batches):
        acts = run_to_hook(model, tokens[b * batch_size:(b + 1) * batch_size], hook_name)
        if drop_bos:
            acts = acts[:, 1:]
        acts = acts.reshape(-1, acts.shape[-1]).to(dtype).cpu()   # [batch·pos, d]
        meta["d"] = acts.shape[-1]
        buffer.append(acts)
        rows_in_buffer += acts.shape[0]
        if rows_in_buffer >= shard_rows:
            flush(b + 1)
    flush(n_batches)
    meta["complete"] = True
    _write_meta(path, meta)
    return ActivationStore(path)


def _read_meta(path: Path) -> dict | None:
    f = path / META
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f} is corrupt ({e}); "
                         "delete the folder or pass overwrite=True to re-cache.") from None


def _write_meta(path: Path, meta: dict) -> None:
    (path / (META + ".tmp")).write_text(json.dumps(meta, indent=2))
    os.replace(path / (META + ".tmp"), path / META)


class ActivationStore:
    """A cached activation folder. ``len(store)`` rows of width ``store.d``; read shard by shard."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta = _read_meta(self.path)
        if meta is None:
            raise FileNotFoundError(f"No activation cache at {self.path} (missing {META}); "
                                    "create one with "
                                    "cache_activations(model, hook_name, tokens, path).")
        if not meta.get("complete"):
            raise ValueError(f"The cache at {self.path} is incomplete (interrupted?). "
                             "Call cache_activations again "
                             "with the same arguments to resume it.")
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
        from safetensors.torch import load_file

        return load_file(str(self.path / self.meta["shards"][i]))["activations"]

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
        gen = torch.Generator().manual_seed(seed)
        target = n_tokens if n_tokens is not None else len(self)
        left = -(-target // batch_size)   # batches still to yield (the last may pass target)
        buffer = torch.empty(0, self.d, dtype=dtype)
        while True:
            for i in torch.randperm(len(self.meta["shards"]), generator=gen).tolist():
                buffer = torch.cat([buffer, self.shard(i).to(dtype)])
                if len(buffer) < buffer_rows:
                    continue
                buffer = buffer[torch.randperm(len(buffer), generator=gen)]
                # the other half mixes with the next shard
                n_out = (len(buffer) // 2) // batch_size * batch_size
                out = _cut(buffer[:n_out], batch_size, left)
                yield from out
                left -= len(out)
                if left == 0:
                    return
                buffer = buffer[n_out:]
            if n_tokens is None:
                break
        # one pass: drain the rest of the buffer
        yield from _cut(buffer[torch.randperm(len(buffer), generator=gen)], batch_size, left)


def _cut(rows: Tensor, batch_size: int, limit: int) -> list[Tensor]:
    """rows [n, d] -> at most ``limit`` full batches [batch_size, d] (a partial last one is dropped)."""
    return list(rows[:len(rows) // batch_size * batch_size].split(batch_size))[:limit]
