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

**Splicing with SAELens.** ``HookedSAETransformer.add_sae`` / ``run_with_saes`` put an SAE at
``metadata.hook_name`` and skip it, with only a log line, when that is missing: pass
``hook_name=`` (and ``model_name=``) to ``save_sae`` (``Lab`` does), or it warns. ``load_sae``
keeps these entries (``sae.sae_lens_metadata``) and ``save_sae`` writes them back. TopK SAEs are
written with ``rescale_acts_by_decoder_norm: true``, which SAELens's ``fold_W_dec_norm`` and so
SAEDashboard need; with the unit-norm decoder rows the trainer keeps, it changes nothing.

**A SAELens SAE object** (``sae_lens.SAE`` and its subclasses) becomes one of ours with
``from_sae_lens`` -- the same translation as loading its checkpoint -- and ``as_sae`` does that
for the lm tools (``splice_eval``, dashboards, steering), so they take either kind.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .base import BaseSAE
from .sae_lens_format import (DTYPES, LM_METADATA_KEYS, CheckpointError, InteropWarning, check_dims,
                              class_and_kwargs, current_layout, unit_norm_rows, weights_for)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
CHECKSUM_KEY = "sae_minimal_sha256"  # in the safetensors header; SAELens ignores it
# SAELens reads metadata.hook_name only from cfgs of version >= 6 (older ones it rebuilds from
# top-level fields): the version of the layout save_sae writes.
SAE_LENS_LAYOUT_VERSION = "6.0.0"


# --- saving ---------------------------------------------------------------------------------------
def save_sae(sae: BaseSAE, path: str | os.PathLike, *, hook_name: str | None = None,
             model_name: str | None = None, metadata: dict | None = None,
             overwrite: bool = False) -> Path:
    """Write ``sae`` to the folder ``path`` (created if needed) in SAELens format; returns the
    folder.

    hook_name:  where the SAE reads the model, e.g. "blocks.6.hook_resid_post" (SAELens's
                ``HookedSAETransformer`` splices it there; without it, SAELens skips the SAE:
                a warning says so).
    model_name: the model's name, e.g. "gpt2" (SAELens and SAEDashboard record it).
    metadata:   other entries of SAELens's ``cfg.metadata``, e.g. {"context_size": 128,
                "prepend_bos": True}.
    All three default to what ``load_sae`` read from the SAE's own checkpoint, if any.

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
        "metadata": {**_lm_metadata(sae, hook_name, model_name, metadata),
                     "sae_lens_version": SAE_LENS_LAYOUT_VERSION,
                     "sae_minimal_class": type(sae).__name__, "sae_minimal_config": sae.config(),
                     "trained_tokens": sae.trained_tokens},
        **sae.sae_lens_cfg(),
    }
    if cfg["architecture"] == "topk":
        cfg["rescale_acts_by_decoder_norm"] = _topk_rescale(weights["W_dec"], path)
    path.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = path / (WEIGHTS_FILENAME + ".tmp"), path / (CFG_FILENAME + ".tmp")
    save_file(weights, str(tmp_w), metadata={CHECKSUM_KEY: tensors_digest(weights)})
    tmp_c.write_text(json.dumps(cfg, indent=2))
    os.replace(tmp_w, path / WEIGHTS_FILENAME)
    os.replace(tmp_c, path / CFG_FILENAME)
    return path


def _lm_metadata(sae: BaseSAE, hook_name: str | None, model_name: str | None,
                 extra: dict | None) -> dict:
    """SAELens's metadata about the model: what ``load_sae`` kept, updated by the arguments; warns
    when the hook is unknown, since SAELens then splices nothing."""
    meta = {"model_name": None, "hook_name": None, **sae.sae_lens_metadata,
            **(extra or {})}
    meta.update({k: v for k, v in (("hook_name", hook_name), ("model_name", model_name))
                 if v is not None})
    unknown = sorted(set(meta) - set(LM_METADATA_KEYS))
    if unknown:
        raise ValueError(f"metadata has {unknown}, which are not SAELens metadata entries about "
                         f"the model; known entries: {list(LM_METADATA_KEYS)}.")
    for name in ("hook_name", "model_name"):
        if meta[name] is not None and not isinstance(meta[name], str):
            raise ValueError(f"{name} must be a string, got {meta[name]!r}.")
    if meta["hook_name"] is None:
        warnings.warn("save_sae got no hook_name, so SAELens's HookedSAETransformer.add_sae / "
                      "run_with_saes will skip this SAE (logging 'No hook found for None') and "
                      "return the clean model's outputs. Pass hook_name= (e.g. "
                      "'blocks.6.hook_resid_post') if it reads a language model.",
                      InteropWarning, stacklevel=3)
    return meta


def _topk_rescale(W_dec: Tensor, path: Path) -> bool:
    """``rescale_acts_by_decoder_norm`` for a TopK SAE: on when it changes nothing (unit-norm
    rows), since SAELens's folding and SAEDashboard refuse it off; off (with a warning) otherwise,
    where on would change which latents are kept."""
    if unit_norm_rows(W_dec):
        return True
    warnings.warn(f"{path}: this TopK SAE's decoder rows are not unit norm, so it is saved with "
                  "rescale_acts_by_decoder_norm false. SAELens loads and runs it, but its "
                  "fold_W_dec_norm refuses it, and so does SAEDashboard. (sae_minimal's trainer "
                  "keeps the rows at unit norm.)", InteropWarning, stacklevel=3)
    return False


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
    cfg = _read_cfg(cfg_file)
    return _build(cfg, lambda: _read_weights(weights_file), device,
                  _blame(cfg_file, "Fix that entry, or save the SAE again with the tool that "
                                   "trained it."),
                  _blame(weights_file, "Re-save or re-download the checkpoint."))


def _build(raw_cfg: dict, read_weights, device, blame_cfg, blame_weights) -> BaseSAE:
    """Our SAE from a SAELens cfg dict and its tensors (``read_weights()``), checked and
    translated as ``load_sae`` describes; errors name the source through the two ``_blame``s."""
    with blame_cfg():
        cfg = current_layout(raw_cfg)
        cls, kwargs = class_and_kwargs(cfg)
    weights = read_weights()
    with blame_weights():
        check_dims(weights, cfg)  # before building: a wrong d_sae must not allocate a huge SAE
    with blame_cfg():
        sae = cls(cfg["d_in"], cfg["d_sae"], dtype=DTYPES[cfg["dtype"]], **kwargs)
    with blame_weights():
        sae.load_sae_lens_weights(weights_for(sae, weights, cfg))
    sae.apply_b_dec_to_input = cfg["apply_b_dec_to_input"]
    sae.trained_tokens = max(1, cfg["metadata"].get("trained_tokens", 1))  # loaded = trained
    sae.sae_lens_metadata = {k: v for k, v in cfg["metadata"].items()
                             if k in LM_METADATA_KEYS and v is not None}
    return sae.to(device).eval()


def _blame(where: Path | str, advice: str):
    """A context manager (factory) turning the ValueError / TypeError / KeyError of a check or a
    constructor into a CheckpointError that names ``where`` and says what to do."""
    @contextmanager
    def blame() -> Iterator[None]:
        try:
            yield
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{where}: {_text(e)} {advice}") from None
    return blame


# --- SAELens SAE objects --------------------------------------------------------------------------
def from_sae_lens(sae_lens_sae) -> BaseSAE:
    """One of our SAEs computing what the SAELens SAE object ``sae_lens_sae`` (``sae_lens.SAE``
    or a subclass, e.g. its ``TopKSAE``) computes: its ``cfg.to_dict()`` and ``state_dict()`` go
    through the same translation as a checkpoint (``load_sae``), so what cannot be translated
    exactly is a CheckpointError naming it. A copy on the same device: later changes to either SAE
    do not reach the other."""
    cfg, state = _sae_lens_parts(sae_lens_sae)
    where = f"the SAELens {type(sae_lens_sae).__name__}"
    device = next(iter(state.values())).device if state else "cpu"
    return _build(cfg, lambda: state, device,
                  _blame(f"{where}'s cfg", "sae_minimal cannot compute this SAE; use SAELens."),
                  _blame(f"{where}'s weights", "Its weights cannot be used as they are."))


def is_sae_lens(obj) -> bool:
    """True for SAELens SAE objects, recognised by their class (no import of sae_lens)."""
    return any(c.__module__.split(".")[0] == "sae_lens" for c in type(obj).__mro__)


def _sae_lens_parts(sae) -> tuple[dict, dict[str, Tensor]]:
    try:
        cfg = sae.cfg.to_dict()
    except AttributeError:
        raise TypeError(f"{type(sae).__name__} is not a SAELens SAE with a cfg.to_dict() "
                        "(sae_lens >= 6); pass an sae_minimal SAE or a sae_lens.SAE.") from None
    return cfg, {k: v.detach() for k, v in sae.state_dict().items()}


# SAELens SAE -> (stamp of its cfg and tensors, our copy): a dashboard or an ablation loop calls
# as_sae on the same SAE many times; a new cfg or a tensor changed in place makes a new copy.
_CONVERTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def as_sae(sae):
    """``sae`` as one of ours: a SAELens SAE object is translated (``from_sae_lens``, cached);
    anything else is returned as it is."""
    if not is_sae_lens(sae):
        return sae
    cfg, state = _sae_lens_parts(sae)
    stamp = (json.dumps(cfg, sort_keys=True, default=str),
             tuple((k, t.data_ptr(), t._version, t.device) for k, t in state.items()))
    known = _CONVERTED.get(sae)
    if known is None or known[0] != stamp:
        known = (stamp, from_sae_lens(sae))
        _CONVERTED[sae] = known
    return known[1]


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


__all__ = ["save_sae", "load_sae", "from_sae_lens", "as_sae", "is_sae_lens", "CheckpointError",
           "InteropWarning", "tensors_digest"]
