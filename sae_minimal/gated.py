"""The Gated SAE of Rajamanoharan et al. (2024), 'Improving Dictionary Learning with Gated Sparse
Autoencoders' (arXiv:2404.16014).

Two paths share one encoder matrix W_gate (called ``W_enc`` here and in SAELens):

    π_gate = (x - b_dec) @ W_gate + b_gate                which latents fire (eq. 6)
    π_mag  = (x - b_dec) @ (W_gate ⊙ exp(r_mag)) + b_mag  how strongly       (eq. 7: weight sharing)
    f      = 1[π_gate > 0] ⊙ ReLU(π_mag)

The L1 penalty acts on the gate path only, so it decides *which* latents fire without shrinking
*how much* they fire. Because the step 1[·] has no gradient, an auxiliary loss trains the gate
path to reconstruct x through a frozen copy of the decoder (eq. 8):

    L = ||x - x̂||² + λ · ||ReLU(π_gate) ⊙ ||W_dec[i]|| ||₁ + ||x - x̂_frozen(ReLU(π_gate))||²

With unit-norm decoder rows (kept by the trainer) the norm weighting is 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import BaseSAE, Encoding, check_coeff, mse
from .kernels import decode_code, encoder_pre_acts


class GatedSAE(BaseSAE, sae_lens_default=True):
    """Gated SAE. Parameters: W_enc (= W_gate), b_gate, r_mag, b_mag, W_dec, b_dec; no b_enc."""

    architecture = "gated"
    scaled_with_input = ("b_gate", "b_mag", "b_dec")

    def __init__(self, d_in: int, d_sae: int, *, l1_coeff: float = 1.0, **kw):
        super().__init__(d_in, d_sae, **kw)
        self.l1_coeff = check_coeff("l1_coeff", l1_coeff)
        del self.b_enc  # the paper's two biases replace it
        self.b_gate = nn.Parameter(torch.zeros_like(self.b_dec.new_empty(d_sae)))
        self.b_mag = nn.Parameter(torch.zeros_like(self.b_gate))
        self.r_mag = nn.Parameter(torch.zeros_like(self.b_gate))

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, d_in] -> (π_gate, π_mag), each [B, d_sae], sharing one matmul."""
        b_dec = self.b_dec if self.apply_b_dec_to_input else None
        return self._both(encoder_pre_acts(x, self.W_enc, None, b_dec))   # (x - b_dec) @ W_enc

    def _both(self, xw: Tensor, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x - b_dec) @ W_enc -> (π_gate, π_mag); at the entries ``indices`` only if given."""
        # index_select, not b[indices]: its backward adds each latent's entries in order (the
        # gather's uses atomics on 2+ CPU threads: another sum each run; see JumpReLUSAE._jump)
        b_gate, r_mag, b_mag = ((self.b_gate, self.r_mag, self.b_mag) if indices is None else
                                (b.index_select(0, indices)
                                 for b in (self.b_gate, self.r_mag, self.b_mag)))
        # (x @ W) ⊙ exp(r) == x @ (W ⊙ exp(r)) since r scales whole columns
        return xw + b_gate, xw * r_mag.exp() + b_mag

    def pre_acts(self, x: Tensor) -> Tensor:
        """Gate pre-activations π_gate [B, d_sae] (what decides firing)."""
        return self._paths(x)[0]

    def encode_flat(self, x: Tensor) -> Encoding:
        """x [B, d_in] -> Encoding(f = 1[π_gate > 0] ⊙ ReLU(π_mag), pre = π_gate).

        Sparse path: the entries are the open gates (π_gate > 0); f, the L1 term and the
        auxiliary reconstruction all vanish elsewhere, and so do their gradients."""
        xw, code = self.sparse_pre_acts(x, lambda xw: xw > -self.b_gate, None)
        if code is None:
            pi_gate, pi_mag = self._both(xw)
            return Encoding((pi_gate > 0) * pi_mag.relu(), pi_gate)
        gate, mag = self._both(code.values, code.indices)
        code = code._replace(values=mag.relu())
        return Encoding(None, xw + self.b_gate, sparse=code, sparse_pre=gate)

    def loss_terms(self, x: Tensor, x_hat: Tensor, enc: Encoding) -> dict[str, Tensor]:
        if enc.sparse is None:
            gate = enc.pre.relu()  # ReLU(π_gate)
            l1 = gate.sum(dim=-1).mean()
            x_hat_frozen = gate @ self.W_dec.detach() + self.b_dec.detach()
        else:                      # the open gates: ReLU(π_gate) = π_gate there, 0 elsewhere
            l1 = enc.sparse_pre.sum() / x.shape[0]
            x_hat_frozen = decode_code(enc.sparse._replace(values=enc.sparse_pre),
                                       self.W_dec.detach(), self.b_dec.detach())
        return {
            "mse": mse(x_hat, x),
            "l1": self.sparsity_warmup * self.l1_coeff * l1,
            "aux": mse(x_hat_frozen, x),
        }

    def config(self) -> dict:
        return {"l1_coeff": self.l1_coeff}

    def sae_lens_weights(self) -> dict[str, Tensor]:
        return {"W_enc": self.W_enc, "b_gate": self.b_gate, "b_mag": self.b_mag,
                "r_mag": self.r_mag, "W_dec": self.W_dec, "b_dec": self.b_dec}
