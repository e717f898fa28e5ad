"""The JumpReLU SAE of Rajamanoharan et al. (2024), 'Jumping Ahead' (arXiv:2407.14435).

    JumpReLU_θ(z) = z · H(z - θ)                       (eq. 4; H is the Heaviside step)
    f = JumpReLU_θ((x - b_dec) @ W_enc + b_enc)
    L = ||x - x̂||²  +  λ · Σ_i H(pre_i - θ_i)           (eq. 10: an L0 penalty)

Active latents pass their value unchanged (no shrinkage); θ > 0 is learned per latent, stored as
log θ so it stays positive. H has zero gradient almost everywhere, so θ is trained with a
straight-through estimator (STE): in the backward pass the derivative of H is replaced by a
rectangle kernel of bandwidth ε (eqs. 11-12):

    ∂/∂θ JumpReLU_θ(z) := -(θ/ε) · K((z - θ)/ε)        ∂/∂θ H(z - θ) := -(1/ε) · K((z - θ)/ε)
    K(u) = 1[|u| < 1/2]   (rectangle)

The gradient with respect to z is the true one: H(z - θ) for JumpReLU and 0 for the step.
The kernel that computes both outputs with these gradients is ``kernels.jumprelu_l0``.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

from .base import BaseSAE, Encoding, check_coeff, mse
from .kernels import SparseCode, flat_entries, jumprelu_l0


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """z [..., d_sae] -> JumpReLU_θ(z) = z · H(z - θ), with the STE gradient for θ [d_sae] above.
    (The SAE computes it together with its L0 count, in one pass: ``kernels.jumprelu_l0``.)"""
    return jumprelu_l0(z, threshold, bandwidth).latents


def check_positive(name: str, value: float) -> float:
    """``value`` as a float if it is a finite number > 0; otherwise a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, Real) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"JumpReLUSAE needs {name} > 0 and finite, got {value!r}.")
    return float(value)


class JumpReLUSAE(BaseSAE, sae_lens_default=True):
    """JumpReLU SAE with an L0 penalty.

    Args:
        l0_coeff:       λ, the price of one firing latent (in units of squared reconstruction error,
                        where E||x|| = √d_in).
        bandwidth:      ε of the rectangle kernel. Small ε: unbiased but noisy threshold gradients.
        init_threshold: initial θ for every latent.

    Defaults are in the trainer's normalised units (E||x|| = √d_in). A wide kernel (ε = 2, as in
    Anthropic's 2025 JumpReLU recipe) gives every threshold a gradient from the start; with the
    paper's ε = 0.001 thresholds of latents that fire far above θ barely move and the SAE can stay
    dense.
    """

    architecture = "jumprelu"
    config_in_input_units = ("bandwidth",)

    def __init__(self, d_in: int, d_sae: int, *, l0_coeff: float = 1.0, bandwidth: float = 2.0,
                 init_threshold: float = 1.0, **kw):
        super().__init__(d_in, d_sae, **kw)
        self.l0_coeff = check_coeff("l0_coeff", l0_coeff)
        self.bandwidth = check_positive("bandwidth", bandwidth)
        init_threshold = check_positive("init_threshold", init_threshold)
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(init_threshold),
                                                     dtype=self.W_enc.dtype,
                                                     device=self.W_enc.device))

    @property
    def threshold(self) -> Tensor:
        """θ [d_sae] = exp(log_threshold)."""
        return self.log_threshold.exp()

    def encode_flat(self, x: Tensor) -> Encoding:
        """x [B, d_in] -> Encoding(latents = JumpReLU_θ(pre), pre,
        l0 = Σ_i H(pre_i - θ_i) per row).

        Sparse path: the code holds the latents that fired (pre > θ), whose pre-activations get
        gradient H(z - θ) = 1. The STE also gives θ a gradient from the latents in the kernel's
        window below θ (θ - ε/2 < pre <= θ), which did not fire: they are decoded with value 0
        (``Encoding.probe``), which gives each its ∂L/∂f, and that gradient goes to θ alone. A
        window entry costs one dot product (d_in multiply-adds), a fired one about four.
        """
        theta = self.threshold
        seen = {}

        def fired_and_window(pre: Tensor) -> Tensor:
            """The entries that fire (pre > θ), as ascending flat indices; the window's
            (θ - ε/2 < pre <= θ) kept in ``seen``: one pass over pre finds both."""
            near = (pre > theta - self.bandwidth / 2).view(-1).nonzero()[:, 0]
            z = pre.view(-1)[near]
            fires = z > theta[near % self.d_sae]
            seen.update(window=near[~fires], z=z[~fires])
            return near[fires]

        pre, code = self.sparse_pre_acts(x, fired_and_window, self.b_enc)
        if code is not None and len(seen["window"]) > pre.numel() / 4:
            code = None   # ε wide against the pre-activations' spread: the dense estimator
        if code is None:
            latents, l0_rows = jumprelu_l0(pre, theta, self.bandwidth)
            return Encoding(latents, pre, l0=l0_rows)
        rows, indices, offsets = flat_entries(seen["window"], *pre.shape)
        probe = SparseCode(seen["z"].detach(), indices, rows, offsets)
        code, fired = self._jump(code, theta)
        probe, fired_below = self._jump(probe, theta)    # values all 0, with θ's STE gradient
        l0_rows = pre.new_zeros(x.shape[0]).index_add(0, code.rows, fired)
        return Encoding(None, pre, l0=l0_rows.index_add(0, probe.rows, fired_below), sparse=code,
                        probe=probe)

    def _jump(self, entries: SparseCode, theta: Tensor) -> tuple[SparseCode, Tensor]:
        """``jumprelu_l0`` on a code's entries, each against its latent's θ: (the code with values
        JumpReLU_θ(z), each entry's step H(z - θ) [nnz])."""
        # index_select, not theta[indices]: its backward (index_add_) sums each θ's entries in
        # order; the gather's backward (index_put_, accumulate) adds them with atomics on 2+ CPU
        # threads, in another order each run, so one seed gave different SAEs
        theta_e = theta.index_select(0, entries.indices)[:, None]
        f, fired = jumprelu_l0(entries.values[:, None], theta_e, self.bandwidth)
        return entries._replace(values=f[:, 0]), fired

    def loss_terms(self, x: Tensor, x_hat: Tensor, enc: Encoding) -> dict[str, Tensor]:
        return {"mse": mse(x_hat, x), "l0": self.sparsity_warmup * self.l0_coeff * enc.l0.mean()}

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.log_threshold.sub_(math.log(scale))  # θ / scale
        self.bandwidth /= scale                  # ε is in the same units as θ

    def config(self) -> dict:
        return {"l0_coeff": self.l0_coeff, "bandwidth": self.bandwidth}

    def sae_lens_weights(self) -> dict[str, Tensor]:
        return {**super().sae_lens_weights(), "threshold": self.threshold}

    @torch.no_grad()
    def load_sae_lens_weights(self, weights: dict[str, Tensor]) -> None:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(self, name).copy_(weights[name])
        self.log_threshold.copy_(weights["threshold"].clamp_min(1e-12).log())  # we learn log θ
