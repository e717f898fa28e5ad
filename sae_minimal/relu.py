"""The L1 ("standard") SAE of Bricken et al. (2023), 'Towards Monosemanticity'.

    f = ReLU((x - b_dec) @ W_enc + b_enc)
    L = ||x - x̂||²  +  λ · Σ_i f_i · ||W_dec[i]||    (Bricken et al. 2023; Conerly et al. 2024)

The decoder rows are kept at unit norm (the trainer projects gradients and renormalises after every
step), so the norm-weighted penalty above equals the plain L1 norm λ·||f||₁ and we compute it that
way. Without the constraint the SAE could shrink f and grow W_dec to make the penalty vanish.

The L1 penalty charges for magnitude, not just for firing: at the optimum an active latent is the
soft-threshold of the true coefficient, max(c - λ/2, 0) for orthonormal features (the chapter's
Exercise 3). That bias is *shrinkage*; notebook 03 measures it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BaseSAE, Encoding, check_coeff, mse


class ReLUSAE(BaseSAE, sae_lens_default=True):
    """L1-penalised ReLU SAE. ``l1_coeff`` is λ above (in units where E||x|| = √d_in)."""

    architecture = "standard"

    def __init__(self, d_in: int, d_sae: int, *, l1_coeff: float = 1.0, **kw):
        super().__init__(d_in, d_sae, **kw)
        self.l1_coeff = check_coeff("l1_coeff", l1_coeff)

    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def encode_flat(self, x: Tensor) -> Encoding:
        """f = ReLU(pre); once trained, few latents fire, and the code is kept as its positive
        entries (``kernels.sparse_encode``: the gradient reaches only those)."""
        pre, code = self.sparse_pre_acts(x, lambda pre: pre > 0, self.b_enc)
        if code is None:
            return Encoding(self.activation(pre), pre)
        return Encoding(None, pre, sparse=code)

    def loss_terms(self, x: Tensor, x_hat: Tensor, enc: Encoding) -> dict[str, Tensor]:
        # latents >= 0, so this is ||f||₁ (unit-norm decoder), averaged over the batch
        l1 = (enc.sparse.values.sum() / x.shape[0] if enc.sparse is not None
              else enc.latents.sum(dim=-1).mean())
        return {"mse": mse(x_hat, x), "l1": self.sparsity_warmup * self.l1_coeff * l1}

    def config(self) -> dict:
        return {"l1_coeff": self.l1_coeff}
