"""The Matryoshka SAE (Nabeshima 2024; Bussmann, Nabeshima, Karvonen & Nanda 2025, arXiv:2503.17547).

One dictionary, trained so that every prefix W_dec[:m] is itself a good SAE. With prefix sizes
m_1 < m_2 < ... < m_n = d_sae (e.g. a geometric series 64, 256, 1024, ...):

    x̂_j = f[:m_j] @ W_dec[:m_j] + b_dec
    L   = Σ_j ||x - x̂_j||²   (+ AuxK)

The latents f come from one TopK or BatchTopK over the full dictionary (Bussmann et al. use
BatchTopK). The first latents must reconstruct x on their own, so they learn coarse, general
features; later ones add detail instead of splitting the early ones (less feature absorption).

The prefix reconstructions are built incrementally, group by group, so the extra cost over a plain
SAE is one small matmul per prefix, not one full decode per prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import mse
from .batchtopk import BatchTopKSAE
from .topk import auxk_loss, topk_relu


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka SAE.

    Args:
        prefix_sizes: increasing dictionary sizes whose prefixes are trained as SAEs; ``d_sae`` is
                      appended if missing. Default: d_sae/16, d_sae/4, d_sae.
        activation:   "batchtopk" (default, as in Bussmann et al.) or "topk".
        k, k_aux, aux_coeff, dead_window, threshold_momentum: as for TopKSAE / BatchTopKSAE.
    """

    def __init__(self, d_in: int, d_sae: int, *, prefix_sizes: list[int] | None = None,
                 activation: str = "batchtopk", **kw):
        super().__init__(d_in, d_sae, **kw)
        if activation not in ("topk", "batchtopk"):
            raise ValueError(f"activation must be 'topk' or 'batchtopk', got {activation!r}.")
        self.inner = activation
        self.architecture = "topk" if activation == "topk" else "jumprelu"
        sizes = sorted(set(prefix_sizes)) if prefix_sizes else [max(1, d_sae // 16), max(1, d_sae // 4)]
        if sizes[0] < 1 or sizes[-1] > d_sae:
            raise ValueError(f"prefix_sizes must lie in [1, d_sae={d_sae}], got {prefix_sizes}.")
        self.prefix_sizes = sizes if sizes[-1] == d_sae else sizes + [d_sae]

    def activation(self, pre: Tensor) -> Tensor:
        if self.inner == "topk":
            return topk_relu(pre, self.k)
        return super().activation(pre)

    def calibrate_threshold(self, x: Tensor, batch_size: int) -> None:
        if self.inner == "batchtopk":   # with per-row TopK there is no threshold to estimate
            super().calibrate_threshold(x, batch_size)

    def loss_terms(self, x: Tensor, x_hat: Tensor, latents: Tensor, pre: Tensor) -> dict[str, Tensor]:
        losses = {}
        recon, start = self.b_dec.expand_as(x), 0
        for m in self.prefix_sizes[:-1]:
            recon = recon + latents[:, start:m] @ self.W_dec[start:m]
            losses[f"mse_{m}"] = mse(recon, x)
            start = m
        losses["mse"] = mse(x_hat, x)  # the last prefix is the whole dictionary
        if self.training:
            losses["auxk"] = auxk_loss(self, x, x_hat, pre, self.k_aux, self.dead_window, self.aux_coeff)
        return losses

    def config(self) -> dict:
        return {"k": self.k, "prefix_sizes": self.prefix_sizes, "activation": self.inner}

