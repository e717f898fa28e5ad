"""Save and load SAEs in SAELens's on-disk format, so our SAEs open in SAELens and theirs open here.

A checkpoint is a folder holding
    cfg.json                  {"architecture": "standard" | "topk" | "jumprelu" | "gated", "d_in", "d_sae",
                               "dtype", "apply_b_dec_to_input", "normalize_activations", "k" (topk), "metadata"}
    sae_weights.safetensors   W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec [d_in], and
                               b_enc [d_sae] (standard, topk, jumprelu), threshold [d_sae] (jumprelu),
                               b_gate, b_mag, r_mag [d_sae] (gated)

BatchTopK (and Matryoshka with BatchTopK) are saved as "jumprelu": at inference they *are* a JumpReLU
with one global threshold. ``metadata.sae_minimal_class`` records our class and its settings so
``load_sae`` gives back exactly what was saved; SAELens ignores it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .base import BaseSAE
from .batchtopk import BatchTopKSAE
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .relu import ReLUSAE
from .topk import TopKSAE

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"

CLASSES = {cls.__name__: cls for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, GatedSAE, MatryoshkaSAE)}
DEFAULT_CLASS = {"standard": ReLUSAE, "topk": TopKSAE, "jumprelu": JumpReLUSAE, "gated": GatedSAE}
WEIGHT_SHAPES = {  # name -> shape as a function of (d_in, d_sae)
    "standard": {"W_enc": "io", "b_enc": "o", "W_dec": "oi", "b_dec": "i"},
    "topk": {"W_enc": "io", "b_enc": "o", "W_dec": "oi", "b_dec": "i"},
    "jumprelu": {"W_enc": "io", "b_enc": "o", "W_dec": "oi", "b_dec": "i", "threshold": "o"},
    "gated": {"W_enc": "io", "b_gate": "o", "b_mag": "o", "r_mag": "o", "W_dec": "oi", "b_dec": "i"},
}


class CheckpointError(ValueError):
    """A checkpoint folder exists but cannot be loaded (corrupt, truncated, mismatched, unknown)."""


def save_sae(sae: BaseSAE, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``sae`` to the folder ``path`` (created if needed) in SAELens format; returns the folder.

    Refuses to replace an existing checkpoint unless ``overwrite=True``. Files are written to a
    temporary name first and then renamed, so an interrupted save never leaves a half-written file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; save_sae needs a folder path for the checkpoint.")
    existing = [p.name for p in (path / CFG_FILENAME, path / WEIGHTS_FILENAME) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{path} already holds a checkpoint ({', '.join(existing)}). Choose another "
                              f"folder, or pass overwrite=True to replace it.")
    arch = sae.architecture
    weights = {name: getattr(sae, name).detach().cpu().contiguous() for name in WEIGHT_SHAPES[arch]}
    cfg = {
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "dtype": str(sae.W_dec.dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_minimal_class": type(sae).__name__, "sae_minimal_config": sae.config(),
                     "trained_tokens": getattr(sae, "trained_tokens", 0)},
    }
    if arch == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    path.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = path / (WEIGHTS_FILENAME + ".tmp"), path / (CFG_FILENAME + ".tmp")
    save_file(weights, str(tmp_w))
    tmp_c.write_text(json.dumps(cfg, indent=2))
    os.replace(tmp_w, path / WEIGHTS_FILENAME)
    os.replace(tmp_c, path / CFG_FILENAME)
    return path


def load_sae(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> BaseSAE:
    """Load an SAE saved by ``save_sae`` or by SAELens (``sae.save_model``) from the folder ``path``."""
    path = Path(path)
    cfg_file, weights_file = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    if not path.is_dir():
        raise FileNotFoundError(f"No SAE checkpoint at {path}: expected a folder containing {CFG_FILENAME} "
                                f"and {WEIGHTS_FILENAME} (as written by save_sae or SAELens's save_model).")
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: an SAE checkpoint folder needs both {CFG_FILENAME} "
                                    f"and {WEIGHTS_FILENAME}.")
    try:
        cfg = json.loads(cfg_file.read_text())
        arch, d_in, d_sae = cfg["architecture"], int(cfg["d_in"]), int(cfg["d_sae"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e}); the file is corrupt or truncated.") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file} lacks a valid 'architecture', 'd_in' or 'd_sae' entry ({e!r}).") from None
    if arch not in WEIGHT_SHAPES:
        raise CheckpointError(f"{cfg_file} has architecture {arch!r}, which sae_minimal cannot load; "
                              f"known architectures: {sorted(WEIGHT_SHAPES)}.")
    if cfg.get("normalize_activations", "none") != "none":
        raise CheckpointError(f"{cfg_file} uses normalize_activations={cfg['normalize_activations']!r}; "
                              "sae_minimal expects the normalisation folded into the weights ('none').")
    try:
        weights = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_file} could not be read ({e}); it is truncated or not a "
                              "safetensors file. Re-save or re-download the checkpoint.") from None

    expected = {name: tuple(d_in if c == "i" else d_sae for c in spec) for name, spec in WEIGHT_SHAPES[arch].items()}
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{weights_file} lacks {missing}, which a {arch!r} SAE needs.")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise CheckpointError(f"{weights_file}: {name} has shape {tuple(weights[name].shape)}, but "
                                  f"{cfg_file} says d_in={d_in}, d_sae={d_sae}, so it should be {shape}.")

    meta = cfg.get("metadata") or {}
    cls = CLASSES.get(meta.get("sae_minimal_class"), DEFAULT_CLASS[arch])
    kwargs = dict(meta.get("sae_minimal_config") or {}) if cls.__name__ == meta.get("sae_minimal_class") else {}
    if arch == "topk" and "k" in cfg:
        kwargs["k"] = int(cfg["k"])
    dtype = getattr(torch, cfg.get("dtype", "float32"), torch.float32)
    sae = cls(d_in, d_sae, dtype=dtype, **kwargs)
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
    with torch.no_grad():
        for name, tensor in weights.items():
            if name not in expected:
                continue
            if name == "threshold" and isinstance(sae, JumpReLUSAE):
                sae.log_threshold.copy_(tensor.clamp_min(1e-12).log())  # we learn log θ
            else:
                getattr(sae, name).copy_(tensor)
    sae.trained_tokens = max(1, int(meta.get("trained_tokens", 1)))  # loaded SAEs count as trained
    return sae.to(device).eval()


__all__ = ["save_sae", "load_sae", "CheckpointError"]
