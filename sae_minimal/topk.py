"""The TopK SAE of Gao et al. (2024), 'Scaling and evaluating sparse autoencoders' (arXiv:2406.04093).

    f = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc))        (eq. 3: keep the k largest, zero the rest)
    L = ||x - x̂||²  +  α · ||e - ê||²                     (sec. 2.4, AuxK)

Sparsity is exact (L0 <= k) and there is no penalty on magnitudes, so no shrinkage. The gradient of
TopK is the mask itself: selected latents pass gradient like a linear layer, the others get none --
no straight-through estimator is needed (the chapter's Exercise 4).

AuxK keeps latents alive: with e = x - x̂ the main model's residual, take the k_aux largest
pre-activations among *dead* latents (no firing in the last ``dead_window`` tokens) and ask them to
reconstruct e, without b_dec: ê = TopK_kaux(pre[dead]) @ W_dec[dead]. α = 1/32 in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BaseSAE, mse


def topk_select(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(ReLU'd values, indices), each [B, k]: the k largest entries of each row of pre [B, d_sae]."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices


def topk_relu(pre: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of each row of pre [B, d_sae], ReLU them, zero the rest."""
    values, indices = topk_select(pre, k)
    return torch.zeros_like(pre).scatter_(-1, indices, values)


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """x̂ [B, d_in] = Σ_j values[:, j] · W_dec[indices[:, j]] (+ b_dec), touching only the k selected rows.

    indices, values: [B, k]. An embedding-bag lookup: B·k·d_in multiply-adds instead of B·d_sae·d_in for the
    dense product, and its backward writes gradient only into the selected rows of W_dec (and into values).
    """
    out = torch.nn.functional.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return out + b_dec if b_dec is not None else out


class _TopKEncode(torch.autograd.Function):
    """pre = x @ W_enc + bias, then the TopK selection: returns (ReLU'd values [B, k], indices [B, k], pre [B, d_sae]).

    The backward exploits sparsity: when nothing downstream used ``pre`` itself (AuxK is idle), the loss depends on
    the k selected pre-activations per row only, so W_enc's gradient is accumulated from those B·k columns
    (B·k·d_in work) instead of the dense x^T @ G matmul (B·d_in·d_sae). When AuxK did use ``pre``, the gradient is
    dense anyway and the ordinary matmul is used.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, bias: Tensor, k: int):
        pre = torch.addmm(bias, x, W_enc)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        values = values.relu()
        ctx.save_for_backward(x, W_enc, indices, values > 0)
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)
        return values, indices, pre

    @staticmethod
    def backward(ctx, grad_values, grad_indices, grad_pre):
        x, W_enc, indices, active = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        g_sel = grad_values * active if grad_values is not None else None          # [B, k]: ReLU's mask
        if grad_pre is not None:                                                  # dense path (AuxK used pre)
            G = grad_pre.clone() if g_sel is None else grad_pre.scatter_add(1, indices, g_sel)
            grad_W = x.T @ G if ctx.needs_input_grad[1] else None
            grad_x = G @ W_enc.T if ctx.needs_input_grad[0] else None
            return grad_x, grad_W, G.sum(0), None
        if g_sel is None:
            return None, None, None, None
        flat_idx, flat_g = indices.reshape(-1), g_sel.reshape(-1)
        grad_bias = torch.zeros(d_sae, dtype=g_sel.dtype, device=g_sel.device).index_add_(0, flat_idx, flat_g)
        grad_W = None
        if ctx.needs_input_grad[1]:  # grad_W[:, j] = Σ_{(b,i): idx=j} g[b,i] · x[b]
            rows = x.repeat_interleave(indices.shape[1], dim=0) * flat_g[:, None]
            grad_W = torch.zeros(d_sae, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, flat_idx, rows).T
        grad_x = sparse_decode(indices, g_sel, W_enc.T.contiguous()) if ctx.needs_input_grad[0] else None
        return grad_x, grad_W, grad_bias, None


# Sparse decoding wins once few enough latents are active; measured crossover on a 2-core CPU (see
# benchmarks/bench_train.py --decode, d_in 768, k 32): 0.9x at k/d_sae = 1/16, 2.0x at 1/32, 15x at 1/768.
SPARSE_DECODE_MAX_FRACTION = 1 / 32


def check_k(k: int, d_sae: int, name: str = "k") -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}.")
    if k > d_sae:
        raise ValueError(f"{name}={k} is larger than d_sae={d_sae}: a TopK SAE cannot keep more latents "
                         f"than it has. Use {name} <= d_sae (typically {name} << d_sae, e.g. 32 of 16384).")
    return k


def auxk_loss(sae: BaseSAE, x: Tensor, x_hat: Tensor, pre: Tensor, k_aux: int, dead_window: int,
              coeff: float) -> Tensor:
    """AuxK (Gao et al. 2024, sec. 2.4): dead latents reconstruct the residual e = x - x̂.

    x, x_hat [B, d_in]; pre [B, d_sae]. Scaled by min(n_dead / k_aux, 1) so a handful of dead latents
    gets a proportionally small push (as in SAELens). Returns 0 when no latent is dead.
    """
    dead = sae.dead_mask(dead_window)
    n_dead = int(dead.sum())
    if n_dead == 0 or coeff == 0:
        return pre.new_zeros(())
    k = min(k_aux, n_dead)
    dead_pre = pre.masked_fill(~dead, float("-inf"))
    e = (x - x_hat).detach()                     # the main model is not trained by this term
    values, indices = topk_select(dead_pre, k)
    e_hat = sparse_decode(indices, values, sae.W_dec)   # no b_dec: it is already in x_hat
    return coeff * min(n_dead / k_aux, 1.0) * mse(e_hat, e)


class TopKSAE(BaseSAE):
    """TopK SAE with AuxK.

    Args:
        k:           latents kept per input (the exact L0).
        k_aux:       latents AuxK may revive per input (paper: a power of two near d_in / 2).
        aux_coeff:   α, weight of the AuxK loss (paper: 1/32).
        dead_window: a latent is dead after this many training tokens without firing
                     (paper: 10M tokens; scale it to your run length).
    """

    architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, *, k: int = 32, k_aux: int | None = None,
                 aux_coeff: float = 1 / 32, dead_window: int = 100_000, **kw):
        super().__init__(d_in, d_sae, **kw)
        self.k = check_k(k, d_sae)
        self.k_aux = check_k(k_aux if k_aux is not None else min(d_sae, max(1, d_in // 2)), d_sae, "k_aux")
        self.aux_coeff = float(aux_coeff)
        self.dead_window = int(dead_window)

    # None: decode sparsely when k / d_sae <= SPARSE_DECODE_MAX_FRACTION; True/False to force either path.
    decode_sparsely: bool | None = None

    def activation(self, pre: Tensor) -> Tensor:
        return topk_relu(pre, self.k)

    def uses_sparse_decode(self) -> bool:
        if self.decode_sparsely is not None:
            return self.decode_sparsely
        return self.k <= SPARSE_DECODE_MAX_FRACTION * self.d_sae

    def forward_flat(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.uses_sparse_decode():
            return super().forward_flat(x)
        values, indices, pre = _TopKEncode.apply(x, self.W_enc, self._enc_bias(self.b_enc), self.k)
        latents = torch.zeros_like(pre).scatter(-1, indices, values.detach())   # dense copy for metrics
        return latents, pre, sparse_decode(indices, values, self.W_dec, self.b_dec)

    def loss_terms(self, x: Tensor, x_hat: Tensor, latents: Tensor, pre: Tensor) -> dict[str, Tensor]:
        losses = {"mse": mse(x_hat, x)}
        if self.training:
            losses["auxk"] = auxk_loss(self, x, x_hat, pre, self.k_aux, self.dead_window, self.aux_coeff)
        return losses

    def config(self) -> dict:
        return {"k": self.k}
