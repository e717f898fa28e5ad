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
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .base import SAE_CLASSES, SAE_LENS_DEFAULTS, BaseSAE

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder exists but cannot be loaded (corrupt, truncated, mismatched, unknown)."""


def save_sae(sae: BaseSAE, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``sae`` to the folder ``path`` (created if needed) in SAELens format; returns the
    folder.

    Refuses to replace an existing checkpoint unless ``overwrite=True``. Files are written to a
    temporary name first and then renamed, so an interrupted save never leaves a half-written file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; save_sae needs a folder path for the checkpoint.")
    existing = [p.name for p in (path / CFG_FILENAME, path / WEIGHTS_FILENAME) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{path} already holds a checkpoint ({', '.join(existing)}). "
                              "Choose another folder, or pass overwrite=True to replace it.")
    weights = {name: t.detach().cpu().contiguous() for name, t in sae.sae_lens_weights().items()}
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
    save_file(weights, str(tmp_w))
    tmp_c.write_text(json.dumps(cfg, indent=2))
    os.replace(tmp_w, path / WEIGHTS_FILENAME)
    os.replace(tmp_c, path / CFG_FILENAME)
    return path


def load_sae(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> BaseSAE:
    """Load an SAE saved by ``save_sae`` or by SAELens (``sae.save_model``) from the folder
    ``path``."""
    path = Path(path)
    cfg_file, weights_file = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    if not path.is_dir():
        raise FileNotFoundError(f"No SAE checkpoint at {path}: expected a folder containing "
                                f"{CFG_FILENAME} and {WEIGHTS_FILENAME} (as written by save_sae "
                                "or SAELens's save_model).")
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: an SAE checkpoint folder needs both "
                                    f"{CFG_FILENAME} and {WEIGHTS_FILENAME}.")
    try:
        cfg = json.loads(cfg_file.read_text())
        arch, d_in, d_sae = cfg["architecture"], int(cfg["d_in"]), int(cfg["d_sae"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e}); "
                              "the file is corrupt or truncated.") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file} lacks a valid 'architecture', 'd_in' or 'd_sae' "
                              f"entry ({e!r}).") from None
    if arch not in SAE_LENS_DEFAULTS:
        raise CheckpointError(f"{cfg_file} has architecture {arch!r}, which sae_minimal cannot "
                              f"load; known architectures: {sorted(SAE_LENS_DEFAULTS)}.")
    if cfg.get("normalize_activations", "none") != "none":
        raise CheckpointError(f"{cfg_file} uses "
                              f"normalize_activations={cfg['normalize_activations']!r}; "
                              "sae_minimal expects the normalisation folded into the weights "
                              "('none').")
    try:
        weights = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_file} could not be read ({e}); it is truncated or not a "
                              "safetensors file. Re-save or re-download the checkpoint.") from None

    meta = cfg.get("metadata") or {}
    ours = SAE_CLASSES.get(meta.get("sae_minimal_class"))
    cls = ours if ours is not None and ours.architecture == arch else SAE_LENS_DEFAULTS[arch]
    kwargs = dict(meta.get("sae_minimal_config") or {}) if cls is ours else {}
    kwargs.update(cls.kwargs_from_sae_lens_cfg(cfg))
    dtype = getattr(torch, cfg.get("dtype", "float32"), torch.float32)
    sae = cls(d_in, d_sae, dtype=dtype, **kwargs)
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))

    expected = {name: tuple(t.shape) for name, t in sae.sae_lens_weights().items()}
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{weights_file} lacks {missing}, which a {arch!r} SAE needs.")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise CheckpointError(f"{weights_file}: {name} has shape "
                                  f"{tuple(weights[name].shape)}, but {cfg_file} says "
                                  f"d_in={d_in}, d_sae={d_sae}, so it should be {shape}.")
    sae.load_sae_lens_weights(weights)
    sae.trained_tokens = max(1, int(meta.get("trained_tokens", 1)))  # loaded SAEs count as trained
    return sae.to(device).eval()


__all__ = ["save_sae", "load_sae", "CheckpointError"]
