"""Save and load SAEs in SAELens's on-disk format, so our SAEs open in SAELens and theirs open here.

A checkpoint is a folder holding
    cfg.json                  {"architecture": "standard" | "topk" | "jumprelu" | "gated",
                               "d_in", "d_sae", "dtype", "apply_b_dec_to_input",
                               "normalize_activations", "k" (topk), "metadata"}
    sae_weights.safetensors   W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec [d_in], and
                               b_enc [d_sae] (standard, topk, jumprelu),
                               threshold [d_sae] (jumprelu), b_gate, b_mag, r_mag [d_sae] (gated)

Each variant owns its part of the format (``BaseSAE.sae_lens_weights`` / ``load_sae_lens_weights`` /
``sae_lens_cfg`` / ``kwargs_from_sae_lens_cfg``), so this file has no per-variant table: a new
variant is one file. BatchTopK (and Matryoshka with BatchTopK) are saved as "jumprelu": at
inference they *are* a JumpReLU with one global threshold. ``metadata.sae_minimal_class`` records
our class and its settings so ``load_sae`` gives back exactly what was saved; SAELens ignores it.

What this file adds to the variants' mapping is SAELens's *layouts*: ``load_sae`` first brings a
checkpoint written by any SAELens version into the layout above (what older versions stored
differently is translated or folded into the weights), and refuses what it cannot translate
exactly. Nothing is dropped in silence: an unknown tensor, a NaN, a cfg value of the wrong type or
a setting sae_minimal cannot reproduce is a ``CheckpointError`` that names it. ``save_sae`` also
stores a SHA-256 of the tensors in the safetensors header, so bytes changed after saving (a bad
disk, a broken copy) are caught instead of loaded.

The layout rules live in ``sae_lens_format.py``, each next to the field it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .base import BaseSAE
from .sae_lens_format import (DTYPES, CheckpointError, check_dims, class_and_kwargs, current_layout,
                              weights_for)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
CHECKSUM_KEY = "sae_minimal_sha256"  # in the safetensors header; SAELens ignores it
# --- saving ---------------------------------------------------------------------------------------
def save_sae(sae: BaseSAE, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``sae`` to the folder ``path`` (created if needed) in SAELens format; returns the
    folder.

    Refuses to replace an existing checkpoint unless ``overwrite=True``, and refuses an SAE with
    NaN/inf weights (``load_sae`` would refuse the checkpoint). Files are written to a temporary
    name first and then renamed, so an interrupted save never leaves a half-written file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; save_sae needs a folder path for the checkpoint.")
    existing = [p.name for p in (path / CFG_FILENAME, path / WEIGHTS_FILENAME) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{path} already holds a checkpoint ({', '.join(existing)}). "
                              "Choose another folder, or pass overwrite=True to replace it.")
    weights = {name: t.detach().cpu().contiguous() for name, t in sae.sae_lens_weights().items()}
    bad = [name for name, t in weights.items() if not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{type(sae).__name__} has NaN/inf values in {bad}, so nothing was saved: "
                         "its training diverged (fp16 weights or too high a learning rate are "
                         "the usual causes). Retrain it rather than keep it.")
    cfg = {
        "architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "dtype": str(sae.W_dec.dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_minimal_class": type(sae).__name__, "sae_minimal_config": sae.config(),
                     "trained_tokens": sae.trained_tokens},
        **sae.sae_lens_cfg(),
    }
    path.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = path / (WEIGHTS_FILENAME + ".tmp"), path / (CFG_FILENAME + ".tmp")
    save_file(weights, str(tmp_w), metadata={CHECKSUM_KEY: tensors_digest(weights)})
    tmp_c.write_text(json.dumps(cfg, indent=2))
    os.replace(tmp_w, path / WEIGHTS_FILENAME)
    os.replace(tmp_c, path / CFG_FILENAME)
    return path


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 (hex) of the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy())  # the raw bytes, without a copy
    return h.hexdigest()


# --- loading --------------------------------------------------------------------------------------
def load_sae(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> BaseSAE:
    """Load an SAE saved by ``save_sae`` or by SAELens (``save_model``, ``save_inference_model``,
    any version) from the folder ``path``.

    Honoured, so that ``encode`` gives what SAELens gives: the layouts before SAELens 6
    (``activation_fn_str: topk`` with k in ``activation_fn_kwargs`` is a TopK SAE; no architecture
    means "standard"; ``normalize_activations: false`` means "none"); ``apply_b_dec_to_input``;
    ``dtype``; ``rescale_acts_by_decoder_norm`` (TopK), folded into the weights; a
    ``finetuning_scaling_factor`` / ``scaling_factor`` tensor (SAELens <= 5), folded into W_dec;
    ``log_threshold`` (older JumpReLU training saves); ``reshape_activations: hook_z`` (pass the
    activations flattened to [..., n_heads * d_head]). The cfg's ``device`` is replaced by
    ``device``, as SAELens's ``load_from_disk`` does; the metadata and training-only fields describe
    how the SAE was made and do not change its computation.

    Refused with a ``CheckpointError`` naming the field: other architectures (SAELens training
    checkpoints included), other activation functions, input normalisation other than "none",
    values of the wrong type or out of range, unknown tensors, NaN/inf weights, and tensors that do
    not match the checksum ``save_sae`` stored with them.
    """
    cfg_file, weights_file = _checkpoint_files(Path(path))
    with _blame(cfg_file, "Fix that entry, or save the SAE again with the tool that trained it."):
        cfg = current_layout(_read_cfg(cfg_file))
        cls, kwargs = class_and_kwargs(cfg)
    weights = _read_weights(weights_file)
    with _blame(weights_file, "Re-save or re-download the checkpoint."):
        check_dims(weights, cfg)  # before building: a wrong d_sae must not allocate a huge SAE
    with _blame(cfg_file, "Fix that entry, or save the SAE again with the tool that trained it."):
        sae = cls(cfg["d_in"], cfg["d_sae"], dtype=DTYPES[cfg["dtype"]], **kwargs)
    with _blame(weights_file, "Re-save or re-download the checkpoint."):
        sae.load_sae_lens_weights(weights_for(sae, weights, cfg))
    sae.apply_b_dec_to_input = cfg["apply_b_dec_to_input"]
    sae.trained_tokens = max(1, cfg["metadata"].get("trained_tokens", 1))  # loaded = trained
    return sae.to(device).eval()


@contextmanager
def _blame(file: Path, advice: str) -> Iterator[None]:
    """Turn the ValueError / TypeError / KeyError of a check or a constructor into a
    CheckpointError that names ``file`` and says what to do."""
    try:
        yield
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{file}: {_text(e)} {advice}") from None


def _text(e: Exception) -> str:
    """An exception's message (a KeyError's str() adds quotes)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def _checkpoint_files(path: Path) -> tuple[Path, Path]:
    cfg_file, weights_file = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    if not path.is_dir():
        raise FileNotFoundError(f"No SAE checkpoint at {path}: expected a folder containing "
                                f"{CFG_FILENAME} and {WEIGHTS_FILENAME} (as written by save_sae "
                                "or SAELens's save_model).")
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: an SAE checkpoint folder needs both "
                                    f"{CFG_FILENAME} and {WEIGHTS_FILENAME}.")
    return cfg_file, weights_file


def _read_cfg(cfg_file: Path) -> dict:
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e}); "
                              "the file is corrupt or truncated.") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file} holds a JSON {type(cfg).__name__}, not an object "
                              "with 'architecture', 'd_in', 'd_sae', ...; the file is corrupt.")
    return cfg


def _read_weights(weights_file: Path) -> dict[str, Tensor]:
    """The file's tensors, checked against the checksum ``save_sae`` stored with them (if any)."""
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            header = f.metadata() or {}
            weights = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{weights_file} could not be read ({e}); it is truncated or not a "
                              "safetensors file. Re-save or re-download the checkpoint.") from None
    if CHECKSUM_KEY in header and header[CHECKSUM_KEY] != tensors_digest(weights):
        raise CheckpointError(f"{weights_file}: the tensors do not match the checksum save_sae "
                              f"stored with them ({CHECKSUM_KEY}): the file changed after it was "
                              "saved (corrupted bytes or an edit). Re-save or re-download it.")
    return weights


__all__ = ["save_sae", "load_sae", "CheckpointError", "tensors_digest"]
