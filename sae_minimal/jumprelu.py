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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import BaseSAE, mse


def rectangle(u: Tensor) -> Tensor:
    """K(u) = 1 if |u| < 1/2 else 0."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = (z > threshold) * grad
        grad_threshold = (-(threshold / eps) * rectangle((z - threshold) / eps) * grad)
        return grad_z, grad_threshold.sum(dim=tuple(range(grad.ndim - 1))), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * rectangle((z - threshold) / eps) * grad
        return torch.zeros_like(z), grad_threshold.sum(dim=tuple(range(grad.ndim - 1))), None


class _JumpReLUWithL0(torch.autograd.Function):
    """Both at once, sharing one mask and one kernel: (z·H(z-θ), Σ_i H(z_i-θ_i) per row). The SAE's
    training step needs both, and fusing them halves the elementwise passes over [B, d_sae]."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float):
        mask = z > threshold
        ctx.save_for_backward(z, threshold, mask)
        ctx.bandwidth = bandwidth
        return z * mask, mask.sum(dim=-1, dtype=z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_l0: Tensor):
        z, threshold, mask = ctx.saved_tensors
        eps = ctx.bandwidth
        near = (z - threshold).abs() < eps / 2                 # K((z - θ)/ε) for the rectangle kernel
        # d out/dθ = -(θ/ε)·K and d L0/dθ = -(1/ε)·K, chained with their incoming gradients
        grad_threshold = (near * (threshold * grad_out + grad_l0[..., None])).sum(dim=tuple(range(z.ndim - 1)))
        return grad_out * mask, -grad_threshold / eps, None


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """z [..., d_sae] -> z · H(z - θ), with the STE gradient for θ [d_sae]."""
    return _JumpReLU.apply(z, threshold, bandwidth)


def step(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """z [..., d_sae] -> H(z - θ) as 0/1 floats, with the STE gradient for θ [d_sae]."""
    return _Step.apply(z, threshold, bandwidth)


class JumpReLUSAE(BaseSAE):
    """JumpReLU SAE with an L0 penalty.

    Args:
        l0_coeff:       λ, the price of one firing latent (in units of squared reconstruction error,
                        where E||x|| = √d_in).
        bandwidth:      ε of the rectangle kernel. Small ε: unbiased but noisy threshold gradients.
        init_threshold: initial θ for every latent.

    Defaults are in the trainer's normalised units (E||x|| = √d_in). A wide kernel (ε = 2, as in
    Anthropic's 2025 JumpReLU recipe) gives every threshold a gradient from the start; with the paper's
    ε = 0.001 thresholds of latents that fire far above θ barely move and the SAE can stay dense.
    """

    architecture = "jumprelu"

    def __init__(self, d_in: int, d_sae: int, *, l0_coeff: float = 1.0, bandwidth: float = 2.0,
                 init_threshold: float = 1.0, **kw):
        super().__init__(d_in, d_sae, **kw)
        if bandwidth <= 0 or init_threshold <= 0 or l0_coeff < 0:
            raise ValueError("JumpReLUSAE needs bandwidth > 0, init_threshold > 0 and l0_coeff >= 0; got "
                             f"bandwidth={bandwidth}, init_threshold={init_threshold}, l0_coeff={l0_coeff}.")
        self.l0_coeff, self.bandwidth = float(l0_coeff), float(bandwidth)
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(init_threshold),
                                                     dtype=self.W_enc.dtype, device=self.W_enc.device))

    @property
    def threshold(self) -> Tensor:
        """θ [d_sae] = exp(log_threshold)."""
        return self.log_threshold.exp()

    def activation(self, pre: Tensor) -> Tensor:
        return jumprelu(pre, self.threshold, self.bandwidth)

    def encode_flat(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """-> (latents [B, d_sae], (pre [B, d_sae], L0 per row [B])): the L0 penalty's STE shares the pass."""
        pre = self.pre_acts(x)
        latents, l0_rows = _JumpReLUWithL0.apply(pre, self.threshold, self.bandwidth)
        return latents, (pre, l0_rows)

    def loss_terms(self, x: Tensor, x_hat: Tensor, latents: Tensor, pre) -> dict[str, Tensor]:
        _, l0_rows = pre
        return {"mse": mse(x_hat, x), "l0": self.sparsity_warmup * self.l0_coeff * l0_rows.mean()}

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.log_threshold.sub_(math.log(scale))  # θ / scale
        self.bandwidth /= scale                  # ε is in the same units as θ

    def config(self) -> dict:
        return {"l0_coeff": self.l0_coeff, "bandwidth": self.bandwidth}
