"""SAELens's checkpoint layouts, old and new: what ``io.load_sae`` honours, translates and refuses.

    current_layout(cfg)      any SAELens version's cfg.json -> the current layout
                             (or a CheckpointError naming the field)
    fold_decoder_norms(w)    rescale_acts_by_decoder_norm=True, folded into the weights exactly
    unit_norm_rows(W_dec)    when that setting changes nothing (so TopK SAEs are saved with it on)

Each rule sits next to the one field it reads, so a reader checks a field in one place. Nothing is
dropped in silence: an unknown tensor, a NaN, a cfg value of the wrong type or a setting sae_minimal
cannot reproduce is a ``CheckpointError`` that names it.

(Over the package's ~250-line guide: SAELens has written many layouts, and each rule stays next
to the field it reads.)
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .base import SAE_CLASSES, SAE_LENS_DEFAULTS, BaseSAE

# The dtype names SAELens writes (sae_lens.constants.DTYPE_MAP), with or without "torch.".
DTYPES = {f"{prefix}{name}": getattr(torch, name)
          for name in ("float32", "float64", "float16", "bfloat16") for prefix in ("", "torch.")}


class CheckpointError(ValueError):
    """A checkpoint folder exists but cannot be loaded (corrupt, truncated, mismatched, unknown)."""


class InteropWarning(UserWarning):
    """A checkpoint was saved, but SAELens or SAEDashboard will not use it as is (no hook name, a
    TopK decoder they cannot fold)."""


# SAELens's cfg.metadata entries about the model and data (its LLM_METADATA_KEYS): load_sae keeps
# them on the SAE (``sae.sae_lens_metadata``) and save_sae writes them back. SAELens reads
# metadata.hook_name to know where HookedSAETransformer splices the SAE in.
LM_METADATA_KEYS = ("model_name", "hook_name", "hook_head_index", "model_class_name",
                    "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
                    "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
                    "hook_name_out", "hook_head_index_out", "hf_hook_name", "hf_hook_name_out")
# SAELens < 6 kept them at the top level of cfg.json, two under older names.
_PRE_6_NAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}


# --- SAELens's cfg.json layouts -------------------------------------------------------------------
# Input normalisations sae_minimal's SAEs cannot apply, and what to do instead.
_RUNTIME = "every input is rescaled at run time, which sae_minimal's SAEs do not do; use SAELens"
NORMALIZATIONS = {
    "expected_average_only_in": "the inputs were scaled by a constant the checkpoint does not "
    "store: fold it into the weights (SAELens: sae.fold_activation_norm_scaling_factor(factor), "
    "then save_model) and set the field to 'none'",
    "covariance_whitening": "fold the whitening into the weights (SAELens: "
    "sae.fold_activation_whitening(...), then save_model) and set the field to 'none'",
    "constant_norm_rescale": _RUNTIME, "layer_norm": _RUNTIME,
}


def current_layout(cfg: dict) -> dict:
    """``cfg`` in the layout at the top of this file, from any layout SAELens has written (as
    SAELens's own ``handle_pre_6_0_config`` does), with every field that changes the computation
    checked: a ValueError naming the field otherwise."""
    out = dict(cfg)
    out["d_in"], out["d_sae"] = _positive_int(cfg, "d_in"), _positive_int(cfg, "d_sae")
    out["dtype"] = cfg.get("dtype", "float32")
    if not isinstance(out["dtype"], str) or out["dtype"] not in DTYPES:
        raise ValueError(f"'dtype' is {out['dtype']!r}; SAELens writes one of "
                         f"{sorted(n for n in DTYPES if '.' not in n)}.")
    for name, default in (("apply_b_dec_to_input", True), ("rescale_acts_by_decoder_norm", False),
                          ("finetuning_scaling_factor", False)):
        out[name] = cfg.get(name, default)
        if not isinstance(out[name], bool):
            raise ValueError(f"'{name}' must be true or false, got {out[name]!r}.")
    _check_normalization(cfg.get("normalize_activations", "none"))
    if cfg.get("reshape_activations", "none") not in (None, "none", "hook_z"):
        raise ValueError(f"'reshape_activations' is {cfg['reshape_activations']!r}; SAELens "
                         "writes 'none' or 'hook_z'.")
    out["metadata"] = _metadata(cfg)
    out["architecture"] = _architecture(out)
    if out["rescale_acts_by_decoder_norm"] and out["architecture"] != "topk":
        raise ValueError("'rescale_acts_by_decoder_norm' is true, but SAELens has it for TopK SAEs "
                         f"only, and 'architecture' is {out['architecture']!r}.")
    return out


def _positive_int(cfg: dict, name: str) -> int:
    if name not in cfg:
        raise ValueError(f"'{name}' is missing.")
    value = cfg[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"'{name}' must be a positive integer, got {value!r}.")
    return value


def _check_normalization(norm: object) -> None:
    if norm is None or norm is False or norm == "none":
        return
    norm = "expected_average_only_in" if norm is True else norm  # SAELens < 6 wrote a bool
    if not isinstance(norm, str) or norm not in NORMALIZATIONS:
        raise ValueError(f"'normalize_activations' is {norm!r}; SAELens writes 'none' or one of "
                         f"{sorted(NORMALIZATIONS)}.")
    raise ValueError(f"'normalize_activations' is {norm!r}: {NORMALIZATIONS[norm]}.")


def _metadata(cfg: dict) -> dict:
    """cfg["metadata"], with the entries ``load_sae`` reads type-checked."""
    meta = cfg.get("metadata")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ValueError(f"'metadata' must be a JSON object, got {meta!r}.")
    meta = dict(meta)
    for key, value in cfg.items():  # SAELens < 6: at the top level (SAELens moves them too)
        key = _PRE_6_NAMES.get(key, key)
        if key in LM_METADATA_KEYS and meta.get(key) is None:
            meta[key] = value
    for name in ("hook_name", "model_name"):
        if meta.get(name) is not None and not isinstance(meta[name], str):
            raise ValueError(f"'metadata.{name}' must be a string such as "
                             f"'blocks.6.hook_resid_post', got {meta[name]!r}.")
    for name, kind in (("sae_minimal_class", str), ("sae_minimal_config", dict)):
        if meta.get(name) is not None and not isinstance(meta[name], kind):
            raise ValueError(f"'metadata.{name}' must be a {kind.__name__}, got {meta[name]!r}.")
    tokens = meta.get("trained_tokens", 1)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ValueError(f"'metadata.trained_tokens' must be an integer >= 0, got {tokens!r}.")
    key = "model_from_pretrained_kwargs"  # top level before SAELens 6, in the metadata since
    model_kwargs = cfg.get(key) or meta.get(key)
    if model_kwargs:  # SAELens warns too: it is about the model, not the SAE
        warnings.warn(f"This SAE was trained on a model loaded with {model_kwargs!r} "
                      "('model_from_pretrained_kwargs'): load the model the same way, or its "
                      "activations will not be the ones the SAE expects.", stacklevel=4)
    return meta


def _architecture(cfg: dict) -> str:
    """The architecture, with an older layout's TopK (``architecture: standard``,
    ``activation_fn_str: topk``, k in ``activation_fn_kwargs``) turned into today's "topk"; sets
    cfg["k"] from ``activation_fn_kwargs`` when it is there."""
    arch = cfg.get("architecture", "standard")  # the layouts before Gated SAEs had no architecture
    if not isinstance(arch, str):
        raise ValueError(f"'architecture' must be a string such as 'standard', got {arch!r}.")
    act = _activation_fn(cfg)
    arch = "topk" if act == "topk" and arch == "standard" else arch
    if arch not in SAE_LENS_DEFAULTS:
        hint = (" It is a SAELens *training* checkpoint: save it with SAELens's "
                "save_inference_model() (which writes BatchTopK as 'jumprelu') and load that."
                if "batchtopk" in arch else "")
        raise ValueError(f"architecture {arch!r}, which sae_minimal cannot load; known "
                         f"architectures: {sorted(SAE_LENS_DEFAULTS)}.{hint}")
    if act == "topk" and arch != "topk":
        raise ValueError(f"'activation_fn' is 'topk' but 'architecture' is {arch!r}: sae_minimal "
                         "has no such SAE, and loading it without TopK would change its outputs.")
    act_kwargs = cfg.get("activation_fn_kwargs") or {}
    if not isinstance(act_kwargs, dict):
        raise ValueError(f"'activation_fn_kwargs' must be a JSON object, got {act_kwargs!r}.")
    if arch == "topk":
        _topk_k(cfg, act_kwargs)
    elif "k" in cfg or "k" in act_kwargs:
        raise ValueError(f"it gives a TopK 'k' but 'architecture' is {arch!r} (a missing "
                         "architecture means 'standard'), which has no k: the two disagree about "
                         "what this SAE is.")
    return arch


def _activation_fn(cfg: dict) -> str:
    """'relu' or 'topk', from the ``activation_fn_str`` / ``activation_fn`` of older layouts."""
    given = {key: cfg[key] for key in ("activation_fn_str", "activation_fn")
             if cfg.get(key) is not None}
    if len({repr(v) for v in given.values()}) > 1:
        raise ValueError(f"'activation_fn_str' and 'activation_fn' disagree: {given}.")
    for key, act in given.items():
        if act not in ("relu", "topk"):
            raise ValueError(f"'{key}' is {act!r}: sae_minimal's encoders use ReLU or TopK, and "
                             "loading this SAE with either would change its outputs.")
        return act
    return "relu"


def _topk_k(cfg: dict, act_kwargs: dict) -> None:
    """Move an older layout's ``activation_fn_kwargs.k`` to cfg["k"] (SAELens reads it there)."""
    unknown = sorted(set(act_kwargs) - {"k", "signed"})
    if unknown:
        raise ValueError(f"'activation_fn_kwargs' has {unknown}, which sae_minimal's TopK does "
                         "not take.")
    if act_kwargs.get("signed", False) is not False:
        raise ValueError("'activation_fn_kwargs.signed' is set: a TopK over |pre-activations| "
                         "that keeps negative values is not a variant sae_minimal has.")
    if "k" in act_kwargs:
        if "k" in cfg and cfg["k"] != act_kwargs["k"]:
            raise ValueError(f"'k' = {cfg['k']!r} and 'activation_fn_kwargs.k' = "
                             f"{act_kwargs['k']!r} disagree; keep the one the SAE was trained "
                             "with.")
        cfg["k"] = act_kwargs["k"]


def class_and_kwargs(cfg: dict) -> tuple[type[BaseSAE], dict]:
    """The class to build -- ours if the metadata names one (it must be of the cfg's
    architecture), else the default for the architecture -- and its constructor arguments."""
    arch, meta = cfg["architecture"], cfg["metadata"]
    ours = SAE_CLASSES.get(meta.get("sae_minimal_class"))
    if ours is None:
        cls = SAE_LENS_DEFAULTS[arch]
        return cls, cls.kwargs_from_sae_lens_cfg(cfg)
    if ours.architecture != arch:
        raise ValueError(f"'metadata.sae_minimal_class' is {ours.__name__}, a "
                         f"{ours.architecture!r} SAE, but 'architecture' is {arch!r}: one of the "
                         "two was edited or corrupted.")
    saved, from_cfg = meta.get("sae_minimal_config") or {}, ours.kwargs_from_sae_lens_cfg(cfg)
    for name, value in from_cfg.items():
        if name in saved and saved[name] != value:
            raise ValueError(f"'{name}' is {value!r} but 'metadata.sae_minimal_config.{name}' is "
                             f"{saved[name]!r}: one of the two was edited or corrupted; make them "
                             "agree.")
    return ours, {**saved, **from_cfg}


# --- SAELens's weight layouts ---------------------------------------------------------------------
def check_dims(weights: dict[str, Tensor], cfg: dict) -> None:
    """The encoder and decoder every architecture has must match the cfg's d_in and d_sae."""
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    for name, shape in (("W_enc", (d_in, d_sae)), ("W_dec", (d_sae, d_in))):
        if name not in weights:
            raise ValueError(f"the file lacks {[name]}, which every SAE needs.")
        if tuple(weights[name].shape) != shape:
            raise ValueError(_shape_error(name, weights[name], shape, cfg))


def _shape_error(name: str, t: Tensor, shape: tuple[int, ...], cfg: dict) -> str:
    return (f"{name} has shape {tuple(t.shape)}, but cfg.json says d_in={cfg['d_in']}, "
            f"d_sae={cfg['d_sae']}, so it should be {shape}.")


def weights_for(sae: BaseSAE, weights: dict[str, Tensor], cfg: dict) -> dict[str, Tensor]:
    """The checkpoint's tensors under the names, in the shapes and dtype ``sae.sae_lens_weights()``
    uses, with what older layouts store differently folded in; a ValueError naming the tensor (or
    the cfg field) otherwise."""
    weights, expected = dict(weights), sae.sae_lens_weights()
    scale = _pop_scaling_factor(weights, cfg)
    if "log_threshold" in weights and "threshold" in expected and "threshold" not in weights:
        log_theta = weights.pop("log_threshold")  # older JumpReLU training saves
        weights["threshold"] = log_theta.exp() if log_theta.is_floating_point() else log_theta
    missing, unknown = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing:
        raise ValueError(f"the file lacks {missing}, which a {cfg['architecture']!r} SAE needs.")
    if unknown:
        raise ValueError(f"the file holds {unknown}, which a {cfg['architecture']!r} SAE does "
                         "not use: sae_minimal does not drop tensors in silence, since they may "
                         "change what the SAE computes.")
    out = {name: _checked(name, weights[name], tuple(ref.shape), ref.dtype, cfg)
           for name, ref in expected.items()}
    if cfg["rescale_acts_by_decoder_norm"] and not unit_norm_rows(out["W_dec"]):
        fold_decoder_norms(out)   # with unit rows it would change nothing but the rounding
    if scale is not None:  # SAELens <= 5 decoded (f * scale) @ W_dec; rows are then not unit norm
        out["W_dec"] = out["W_dec"] * scale.to(out["W_dec"].dtype)[:, None]
    return out


def _checked(name: str, t: Tensor, shape: tuple[int, ...], dtype: torch.dtype, cfg: dict) -> Tensor:
    """``t`` in ``dtype``, if it has ``shape``, is floating point and finite in ``dtype``."""
    if tuple(t.shape) != shape:
        raise ValueError(_shape_error(name, t, shape, cfg))
    if not t.is_floating_point():
        raise ValueError(f"{name} has dtype {t.dtype}, but SAE weights are floating point: the "
                         "file is corrupt.")
    cast = t.to(dtype)
    n_bad = int((~torch.isfinite(cast)).sum())
    if n_bad:
        where = f" once converted to the cfg's dtype {cfg['dtype']}" if t.isfinite().all() else ""
        raise ValueError(f"{name} holds {n_bad} NaN/inf values{where}: the checkpoint is corrupt "
                         "or its training diverged.")
    return cast


def _pop_scaling_factor(weights: dict[str, Tensor], cfg: dict) -> Tensor | None:
    """Remove SAELens <= 5's per-latent decoder scale [d_sae] (``finetuning_scaling_factor``, or
    ``scaling_factor`` before) from ``weights``; return it, or None if absent or all ones (SAELens
    drops it then too)."""
    names = [n for n in ("finetuning_scaling_factor", "scaling_factor") if n in weights]
    if not names:
        return None
    if len(names) > 1:
        raise ValueError(f"the file holds both {names}; SAELens never writes both.")
    name, scale = names[0], weights.pop(names[0])
    if (tuple(scale.shape) != (cfg["d_sae"],) or not scale.is_floating_point()
            or not scale.isfinite().all()):
        raise ValueError(f"{name} must be {cfg['d_sae']} finite floats (one per latent), got "
                         f"shape {tuple(scale.shape)} of {scale.dtype}.")
    if torch.allclose(scale, torch.ones_like(scale)):
        return None
    if not cfg["finetuning_scaling_factor"]:
        raise ValueError(f"the file holds {name} (not all ones), but cfg.json's "
                         "'finetuning_scaling_factor' is not true, so whether the decoder uses it "
                         "is unknown (SAELens refuses this too). If it does (SAELens <= 5 decoded "
                         "(f * scale) @ W_dec), set 'finetuning_scaling_factor' to true.")
    return scale


@torch.no_grad()
def fold_decoder_norms(w: dict[str, Tensor]) -> None:
    """Fold SAELens's ``rescale_acts_by_decoder_norm`` (TopK) into the weights, in place.

    SAELens then encodes f = TopK(pre · n) and decodes x̂ = (f / n) @ W_dec + b_dec, with
    n = ||W_dec[i]|| [d_sae]. With W_enc·n, b_enc·n (columns) the plain formulas compute pre · n,
    and with W_dec / n they decode f / n: the same code and reconstruction, and unit decoder rows
    (SAELens's fold_W_dec_norm). Rows of norm 0 stay 0 (SAELens would decode 0 · inf = NaN).
    """
    n = w["W_dec"].norm(dim=-1)
    w["W_enc"], w["b_enc"] = w["W_enc"] * n, w["b_enc"] * n
    w["W_dec"] = w["W_dec"] / n.clamp_min(1e-8)[:, None]


def unit_norm_rows(W_dec: Tensor) -> bool:
    """True when every decoder row [d_sae, d_in] has norm 1 up to the rounding of its dtype
    (1e-5 at least): then ``rescale_acts_by_decoder_norm`` multiplies and divides by 1 and the
    TopK SAE computes the same with it on or off. The trainer keeps rows at unit norm, so save_sae
    writes it on: SAELens's ``fold_W_dec_norm`` (which SAEDashboard calls) refuses a TopK SAE
    with it off, since folding would then change which latents are kept."""
    tol = max(1e-5, torch.finfo(W_dec.dtype).eps)
    return bool(((W_dec.double().norm(dim=-1) - 1).abs() <= tol).all())


__all__ = ["CheckpointError", "InteropWarning", "DTYPES", "LM_METADATA_KEYS", "current_layout",
           "class_and_kwargs", "check_dims", "weights_for", "fold_decoder_norms",
           "unit_norm_rows"]
