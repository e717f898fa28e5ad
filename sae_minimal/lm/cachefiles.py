"""Files the caches can trust: atomic writes, an atomic swap of a whole folder, and a lock.

    write_shard, write_meta   write to a temporary name (per process), then rename into place
    swap_in, recover_swap     replace a cache folder by a complete new one with two renames; a crash
                              between them is finished on the next open
    file_lock                 one writer at a time, across processes (fcntl; released even on
                              kill -9)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import Tensor

META = "meta.json"
SHARD = re.compile(r"shard_\d+\.safetensors")


def write_shard(file: Path, rows: Tensor) -> None:
    from safetensors.torch import save_file

    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")   # per process: writers never collide
    save_file({"activations": rows.contiguous()}, str(tmp))
    os.replace(tmp, file)


def sibling(path: Path, role: str) -> Path:
    """The hidden companion of cache folder ``path``: '.name.lock', '.name.overwrite', ..."""
    path = path.absolute()
    return path.with_name(f".{path.name}.{role}")


def swap_in(path: Path, staging: Path, old_meta: dict) -> None:
    """Replace the cache at ``path`` by the complete one at ``staging``: two renames. A crash
    between them leaves both folders, and ``recover_swap`` finishes the swap."""
    ours = {META, *old_meta.get("shards", [])}
    for entry in path.iterdir():                 # files a user kept in the folder stay there
        if entry.name not in ours and not entry.name.endswith(".tmp") \
                and not SHARD.fullmatch(entry.name) and not (staging / entry.name).exists():
            os.replace(entry, staging / entry.name)
    aside = sibling(path, "replaced")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    os.replace(staging, path)
    shutil.rmtree(aside, ignore_errors=True)


def recover_swap(path: Path) -> None:
    """Finish a swap that a crash interrupted (see ``swap_in``)."""
    staging, aside = sibling(path, "overwrite"), sibling(path, "replaced")
    if not path.exists() and aside.is_dir():
        staged = read_meta(staging, corrupt_ok=True)
        os.replace(staging if staged and staged.get("complete") else aside, path)
    if (path / META).is_file() and aside.exists():
        shutil.rmtree(aside, ignore_errors=True)


# lock files this thread holds: locking one again (a nested call) would wait for itself
_HELD = threading.local()


@contextmanager
def file_lock(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file``: another process waits here until it is released
    (at exit, on an exception or when the holder is killed, even with kill -9). Where ``fcntl`` is
    missing (Windows) this does nothing, and the atomic renames alone keep each file whole."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    held = _HELD.__dict__.setdefault("files", set())
    if lock_file in held:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"Waiting for another process that is {what} ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        held.add(lock_file)
        try:
            yield
        finally:
            held.discard(lock_file)
            fcntl.flock(f, fcntl.LOCK_UN)


def read_meta(path: Path, *, corrupt_ok: bool = False) -> dict | None:
    f = path / META
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if corrupt_ok:
            return None
        raise ValueError(f"{f} is corrupt ({e}); "
                         "delete the folder or pass overwrite=True to re-cache.") from None


def write_meta(path: Path, meta: dict) -> None:
    tmp = path / f"{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path / META)
