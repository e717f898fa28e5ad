"""The small base class every SAE variant shares.

An SAE maps an activation x [d_in] to a sparse code f [d_sae] and back:

    pre  = (x - b_dec) @ W_enc + b_enc  (Bricken et al. 2023, eq. 1; Gao et al. 2024, eq. 1)
    f    = activation(pre)              (ReLU, TopK, JumpReLU, ...: what variants mostly change)
    x̂    = f @ W_dec + b_dec            (W_dec rows are the feature directions d_i)

Subtracting ``b_dec`` before encoding ("apply_b_dec_to_input" in SAELens) centres the data on the
decoder bias, so the encoder sees the same centred input that the decoder reconstructs.

What a variant may change is listed in one place, ``BaseSAE``'s "extension points" below; the rest
(input checks, the forward pass, the unit-norm decoder, folding an activation scale into the
weights, dead-latent bookkeeping, the state the trainer reads) is shared.

(Longer than the package's ~250-line guide: it is one class, read top to bottom, and every
extension point is defined here with its default, so a reader finds the whole contract in one file.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from .kernels import (Select, SparseCode, decode_code, encoder_pre_acts, flat_entries,
                      sparse_encode, sparse_max_density)
from .metrics import l0


class SAEOutput:
    """What ``sae(x)`` returns.

    x_hat:   reconstruction, same shape as x            [..., d_in]
    latents: sparse code                                  [..., d_sae]
    loss:    scalar training loss (sum of ``losses``)
    losses:  named, already-weighted loss terms, e.g. {"mse": ..., "l1": ...}

    ``latents`` may be passed as a function that builds it: on the sparse path the dense code (a
    pass over B·d_sae entries) is made only if read, and training reads it on logging steps only.
    """

    def __init__(self, x_hat: Tensor, latents: Tensor | Callable[[], Tensor], loss: Tensor,
                 losses: dict[str, Tensor] | None = None, code: SparseCode | None = None):
        self.x_hat, self._latents, self.loss = x_hat, latents, loss
        self.losses = {} if losses is None else losses
        self._code = code   # the sparse path's entries, which ``l0`` counts without a dense code

    def l0(self) -> float:
        """E_x ||f(x)||₀ over this output's rows: ``metrics.l0(self.latents)``, counted from the
        sparse code's entries when the dense latents were not built (training logs it)."""
        if not callable(self._latents) or self._code is None:
            return l0(self.latents)
        rows = self.x_hat.numel() // self.x_hat.shape[-1]
        return float((self._code.values != 0).sum().float() / rows)

    @property
    def latents(self) -> Tensor:
        if callable(self._latents):
            self._latents = self._latents()
        return self._latents

    def __repr__(self) -> str:
        return (f"SAEOutput(x_hat {tuple(self.x_hat.shape)}, latents [..., d_sae], "
                f"loss {float(self.loss):.4g}, losses {list(self.losses)})")


class Encoding(NamedTuple):
    """What ``encode_flat`` returns: the code, and what the loss needs from the encoder."""

    latents: Tensor | None
    """[B, d_sae] the sparse code f (zeros where a latent is off); None on the sparse path, where
    ``sparse`` holds it (``dense_latents`` builds it)."""
    pre: Tensor
    """[B, d_sae] the pre-activations that decide firing: (x - b_dec) @ W_enc + b_enc
    (π_gate in Gated)."""
    l0: Tensor | None = None
    """[B] a differentiable count of active latents per row (JumpReLU's L0 penalty), else None."""
    sparse: SparseCode | None = None
    """The code as its non-zero entries (the sparse path, ``kernels.sparse_encode``), else None.
    Then gradients flow through ``sparse.values``."""
    sparse_pre: Tensor | None = None
    """[nnz] the pre-activations at ``sparse``'s entries, when the loss needs them (π_gate in
    Gated)."""
    probe: SparseCode | None = None
    """Entries decoded with value 0, so that they receive their gradient ∂L/∂f: what a
    straight-through estimator needs from latents that did not fire (JumpReLU's window)."""

    def dense_latents(self) -> Tensor:
        """latents [B, d_sae], built from ``sparse`` (detached) on the sparse path."""
        return self.latents if self.latents is not None else self.sparse.dense(self.pre.shape[1])


def check_activations(x: object, d_in: int, *, name: str = "x") -> Tensor:
    """Validate a batch of activations and return it; raise ``ValueError`` saying what to fix."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [..., {d_in}], "
                        f"got {type(x).__name__}. "
                        f"Convert with torch.as_tensor({name}, dtype=torch.float32).")
    if not x.is_floating_point():
        raise ValueError(f"{name} has dtype {x.dtype}, but activations must be floating point. "
                         "Did you pass token ids instead of activations? "
                         f"If not, use {name}.float().")
    if x.ndim == 0 or x.shape[-1] != d_in:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, but this SAE expects "
                         f"[..., d_in={d_in}] (the last dimension must be d_in). "
                         "Check the hook/layer the activations came from.")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): "
                         "there are no activations to encode.")
    # one reduction first: a sum is finite when every entry is (an overflow to inf from huge
    # finite values falls through to the exact check, which then passes); four passes otherwise
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).sum())
        var = name if name.isidentifier() else "x"  # a name like "batch 3" is no Python variable
        raise ValueError(f"{name} contains {n_bad} NaN/inf values. Drop those rows (e.g. "
                         f"{var}[torch.isfinite({var}).all(-1)]) "
                         "or fix the upstream computation.")
    return x


# Every variant class, by name (filled as each is defined): io.load_sae finds the class to build
# here, and SAE_LENS_DEFAULTS maps a SAELens architecture name to the class a foreign checkpoint
# loads as.
SAE_CLASSES: dict[str, type[BaseSAE]] = {}
SAE_LENS_DEFAULTS: dict[str, type[BaseSAE]] = {}


class BaseSAE(nn.Module):
    """Parameters and plumbing shared by every variant.

    Args:
        d_in:  width of the activations (e.g. 768 for GPT-2 small's residual stream).
        d_sae: number of latents (dictionary size); d_sae / d_in is the overcomplete factor.
        seed:  seeds the weight initialisation, so two SAEs built with the same seed are identical.

    Initialisation follows Gao et al. (2024, sec. 2.4): decoder rows are random unit vectors and the
    encoder starts as the decoder's transpose, which makes early training stable and avoids most
    dead latents. ``b_enc`` and ``b_dec`` start at zero (the trainer sets ``b_dec`` from the data).

    A variant is one file: a subclass that overrides some of the extension points below and declares
    ``architecture`` (SAELens's name for its inference computation).
    ``class V(BaseSAE, sae_lens_default=True)`` makes V the class that SAELens checkpoints of that
    architecture load as.
    """

    architecture: ClassVar[str] = "base"  # the SAELens architecture name used when saving
    unit_norm_decoder: ClassVar[bool] = True  # trainer keeps ||W_dec[i]|| = 1
    # Parameters in the units of x (biases, thresholds): folding an activation scale divides these.
    scaled_with_input: ClassVar[tuple[str, ...]] = ("b_enc", "b_dec")
    # config() entries in the units of x too (JumpReLU's bandwidth): training folds its input scale
    # into them, so a trained SAE's value differs from the one it was built with.
    config_in_input_units: ClassVar[tuple[str, ...]] = ()
    # State the trainer reads and writes (declared here, never probed by name):
    dead_window: int = 100_000  # a latent is dead after this many training tokens without firing
    trained_tokens: int = 0     # tokens trained on so far; > 0 means train_sae continues training
    sparsity_warmup: float = 1.0  # the trainer ramps this 0 -> 1 to warm up sparsity penalties
    # Keep each batch's code as its non-zero entries (kernels.sparse_encode) when it is sparse
    # enough for this device (kernels.sparse_max_density): None = decide per batch from its
    # measured density; True / False force the sparse / dense path.
    sparse_path: bool | None = None
    # SAELens's cfg.metadata for this SAE (hook_name, model_name, ...): load_sae sets it, save_sae
    # writes it back. Replaced as a whole, never edited in place (the default is shared).
    sae_lens_metadata: Mapping[str, object] = MappingProxyType({})

    def __init_subclass__(cls, *, sae_lens_default: bool = False, **kw):
        super().__init_subclass__(**kw)
        SAE_CLASSES[cls.__name__] = cls
        if sae_lens_default:
            SAE_LENS_DEFAULTS[cls.architecture] = cls

    def __init__(self, d_in: int, d_sae: int, *, seed: int | None = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device | None = None):
        super().__init__()
        for name, value in (("d_in", d_in), ("d_sae", d_sae)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not dtype.is_floating_point:
            raise ValueError("dtype must be a floating-point dtype (e.g. torch.float32), "
                             f"got {dtype}.")
        self.d_in, self.d_sae = d_in, d_sae
        self.apply_b_dec_to_input = True
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        W_dec = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        kw = dict(dtype=dtype, device=device)
        self.W_dec = nn.Parameter(W_dec.to(**kw))
        self.W_enc = nn.Parameter(W_dec.T.clone().to(**kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        # Tokens seen since each latent last fired: drives dead-latent metrics and AuxK (not saved).
        self.register_buffer("tokens_since_fired",
                             torch.zeros(d_sae, dtype=torch.long, device=device), persistent=False)

    # --- extension points: what a variant may override ----------------------------------------
    # activation(pre)            the nonlinearity, when the encoder is pre -> f
    #                            (ReLU, TopK, BatchTopK)
    # encode_flat(x)             the whole encoder, when it is more than that
    #                            (Gated, JumpReLU, and every variant's sparse path)
    # decode_flat(enc)           the decoder, when it is more than f @ W_dec + b_dec
    # loss_terms(x, x_hat, enc)  the sparsity penalty and auxiliary losses
    # config()                   hyperparameters saved in cfg.json and used by the lab's cache key
    # fold_input_scale(s)        extend (call super) for parameters not simply in x's units
    #                            (JumpReLU)
    # after_training(x, B)       a calibration step once training ends (BatchTopK's threshold)
    # sae_lens_weights(), load_sae_lens_weights(w), sae_lens_cfg(), kwargs_from_sae_lens_cfg(cfg)
    #                            the variant's own mapping to and from SAELens's checkpoint (io.py)
    def activation(self, pre: Tensor) -> Tensor:
        """pre-activations [B, d_sae] -> latents [B, d_sae]."""
        raise NotImplementedError(f"{type(self).__name__} must override activation() "
                                  "or encode_flat().")

    def encode_flat(self, x: Tensor) -> Encoding:
        """x [B, d_in] (already checked) -> Encoding(latents [B, d_sae], pre [B, d_sae])."""
        pre = self.pre_acts(x)
        return Encoding(self.activation(pre), pre)

    def decode_flat(self, enc: Encoding) -> Tensor:
        """Encoding -> x_hat [B, d_in] = f @ W_dec + b_dec (from the entries on the sparse
        path)."""
        if enc.sparse is None:
            return torch.addmm(self.b_dec, enc.latents, self.W_dec)
        x_hat = decode_code(enc.sparse, self.W_dec, self.b_dec)
        return x_hat if enc.probe is None else x_hat + decode_code(enc.probe, self.W_dec)

    def loss_terms(self, x: Tensor, x_hat: Tensor, enc: Encoding) -> dict[str, Tensor]:
        """Named, already-weighted loss terms for a flat batch x [B, d_in].
        Default: reconstruction."""
        return {"mse": mse(x_hat, x)}

    def config(self) -> dict:
        """Variant-specific hyperparameters saved in cfg.json (besides d_in and d_sae)."""
        return {}

    def after_training(self, x: Tensor, batch_size: int) -> None:
        """Called by train_sae once training ends, with a sample x [N, d_in] in training units."""

    def sae_lens_weights(self) -> dict[str, Tensor]:
        """The tensors of a checkpoint, under SAELens's names, in the shapes SAELens uses."""
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}

    @torch.no_grad()
    def load_sae_lens_weights(self, weights: dict[str, Tensor]) -> None:
        """Copy checkpoint tensors (already shape-checked against ``sae_lens_weights``)
        into the SAE."""
        for name, param in self.sae_lens_weights().items():
            param.copy_(weights[name])

    def sae_lens_cfg(self) -> dict:
        """Entries this variant adds to SAELens's cfg.json (e.g. TopK's k)."""
        return {}

    @classmethod
    def kwargs_from_sae_lens_cfg(cls, cfg: dict) -> dict:
        """Constructor arguments read from a SAELens cfg.json (e.g. TopK's k)."""
        return {}

    # --- the forward pass -----------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        """x [B, d_in] -> pre-activations [B, d_sae] = (x - b_dec) @ W_enc + b_enc."""
        b_dec = self.b_dec if self.apply_b_dec_to_input else None
        return encoder_pre_acts(x, self.W_enc, self.b_enc, b_dec)

    def sparse_pre_acts(self, x: Tensor, select: Select, b_enc: Tensor | None
                        ) -> tuple[Tensor, SparseCode | None]:
        """x [B, d_in] -> ((x - b_dec) @ W_enc + b_enc [B, d_sae], the entries ``select(pre)``
        keeps as a SparseCode, or None for the dense path): ``kernels.sparse_encode``, with the
        density limit that ``sparse_path`` and this device set."""
        b_dec = self.b_dec if self.apply_b_dec_to_input else None
        if self.sparse_path is False:
            return encoder_pre_acts(x, self.W_enc, b_enc, b_dec), None
        return sparse_encode(x, self.W_enc, b_enc, b_dec, select, self.sparse_limit(x.device))

    def sparse_limit(self, device: torch.device) -> float:
        """The largest code density the sparse path takes on ``device`` (1 when forced)."""
        return 1.0 if self.sparse_path else sparse_max_density(device)

    def _flat(self, x: Tensor) -> Tensor:
        x = check_activations(x, self.d_in)
        return x.reshape(-1, self.d_in).to(self.W_enc.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """x [..., d_in] -> latents [..., d_sae]."""
        return self.encode_flat(self._flat(x)).dense_latents().reshape(*x.shape[:-1], self.d_sae)

    @torch.no_grad()
    def encode_entries(self, x: Tensor) -> SparseCode:
        """x [..., d_in] (flattened to N rows) -> the code's non-zero entries as a SparseCode
        (values detached): what ``encode(x)`` holds, without building its [N, d_sae] tensor on
        the sparse path. For counting and picking latents over many rows (densities, F1,
        chosen columns)."""
        enc = self.encode_flat(self._flat(x))
        if enc.sparse is None:
            latents = enc.latents
            flat = latents.reshape(-1).nonzero().squeeze(1)                 # ascending
            rows, indices, offsets = flat_entries(flat, *latents.shape)
            return SparseCode(latents.reshape(-1)[flat], indices, rows, offsets)
        code = enc.sparse._replace(values=enc.sparse.values.detach())
        kept = code.values != 0        # e.g. Gated's open gates with a magnitude of 0
        if bool(kept.all()):
            return code
        rows = code.rows[kept]
        counts = torch.bincount(rows, minlength=len(code.offsets))
        return SparseCode(code.values[kept], code.indices[kept], rows, counts.cumsum(0) - counts)

    def decode(self, latents: Tensor) -> Tensor:
        """latents [..., d_sae] -> x_hat [..., d_in]."""
        if latents.shape[-1] != self.d_sae:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, "
                             f"expected [..., d_sae={self.d_sae}].")
        flat_BS = latents.reshape(-1, self.d_sae).to(self.W_dec.dtype)
        x_hat_BD = torch.addmm(self.b_dec, flat_BS, self.W_dec)
        return x_hat_BD.reshape(*latents.shape[:-1], self.d_in)

    def forward(self, x: Tensor) -> SAEOutput:
        """x [..., d_in] -> SAEOutput with x_hat [..., d_in], latents [..., d_sae], loss, losses."""
        flat = self._flat(x)
        enc = self.encode_flat(flat)
        x_hat = self.decode_flat(enc)
        if self.training:
            self._update_dead_counter(enc)
        losses = self.loss_terms(flat, x_hat, enc)
        lead, code, d_sae = x.shape[:-1], enc.sparse, self.d_sae
        latents = (enc.latents.reshape(*lead, d_sae) if enc.latents is not None
                   else lambda: code.dense(d_sae).reshape(*lead, d_sae))   # built if read
        return SAEOutput(x_hat=x_hat.reshape(*lead, self.d_in), latents=latents,
                         loss=sum(losses.values()), losses=losses, code=code)

    # --- training support -----------------------------------------------------------------------
    @torch.no_grad()
    def _update_dead_counter(self, enc: Encoding) -> None:
        self.tokens_since_fired += enc.pre.shape[0]
        if enc.sparse is not None:
            self.tokens_since_fired[enc.sparse.indices[enc.sparse.values > 0]] = 0
        else:
            self.tokens_since_fired[(enc.latents > 0).any(dim=0)] = 0

    def dead_mask(self, window: int | None = None) -> Tensor:
        """[d_sae] bool: latents that have not fired in the last ``window`` (default
        ``dead_window``) training tokens."""
        return self.tokens_since_fired >= (window if window is not None else self.dead_window)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each decoder row (feature direction) to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component parallel to each decoder row, so a step moves
        directions along the unit sphere instead of growing them (Bricken et al. 2023,
        'Autoencoder')."""
        if self.W_dec.grad is None:
            return
        W, G = self.W_dec, self.W_dec.grad
        # G -= (<G_i, W_i> / <W_i, W_i>) W_i per row, in three passes over [d_sae, d_in] and no
        # temporaries of that size (it runs every step on the largest tensors)
        along = torch.einsum("sd,sd->s", G, W) / W.norm(dim=-1).square().clamp_min(1e-16)
        G.addcmul_(W, along[:, None], value=-1)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` work on raw x, with latents in raw units.

        pre(scale*x) / scale == (x - b_dec/scale) @ W_enc + b_enc/scale, so dividing the biases (and
        thresholds) by ``scale`` divides every pre-activation by it; ReLU / TopK / JumpReLU / gates
        commute with a positive rescale, so latents are divided by ``scale`` too and decoding them
        with the unchanged unit-norm W_dec gives x̂ / scale.
        """
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}.")
        for name in self.scaled_with_input:
            getattr(self, name).div_(scale)

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.config().items())
        return f"d_in={self.d_in}, d_sae={self.d_sae}{extra}"


def mse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Squared reconstruction error ||x - x̂||², summed over d_in and averaged over the batch."""
    return (x_hat - x).pow(2).sum(dim=-1).mean()


def check_coeff(name: str, value: float) -> float:
    """``value`` as a float if it is a finite number >= 0 (a penalty's coefficient); otherwise a
    ValueError naming the argument."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be >= 0 and finite, got {value!r}.")
    return float(value)
