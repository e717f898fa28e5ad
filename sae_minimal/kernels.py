"""Speed code, kept apart from the variants so those read like their papers.

Each function here equals a plain formula, written in its docstring, and a test proves it (named
there): the variant files call these where the fast path applies and say which formula they stand
for.

    encoder_pre_acts   (x - b_dec) @ W_enc + b_enc, with b_dec folded into the bias
    sparse_decode      Σ_j values[:, j] · W_dec[indices[:, j]] (+ b_dec): decode k latents,
                       not d_sae
    topk_encode        TopK of the pre-activations, with a backward that touches only the
                       selected columns
    jumprelu_l0        JumpReLU and its L0 count in one pass, with the straight-through
                       threshold gradients

SPARSE_DECODE_MAX_FRACTION is the measured k / d_sae below which decoding sparsely pays on a CPU.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# Sparse decoding wins once few enough latents are active; measured crossover on a 2-core CPU
# (benchmarks/bench_train.py --decode, d_in 768, k 32): 0.9x at k/d_sae = 1/16, 2.0x at 1/32,
# 15x at 1/768.
SPARSE_DECODE_MAX_FRACTION = 1 / 32


def encoder_pre_acts(x: Tensor, W_enc: Tensor, b_enc: Tensor | None,
                     b_dec: Tensor | None) -> Tensor:
    """x [B, d_in] -> (x - b_dec) @ W_enc + b_enc  [B, d_sae]  (b_enc or b_dec None: left out).

    Computed as x @ W_enc + (b_enc - b_dec @ W_enc): the same numbers, but autograd then gets
    b_dec's gradient from a vector-matrix product instead of a full [B, d_sae] x [d_sae, d_in]
    matmul -- a third of a TopK SAE's backward pass.
    Test: tests/test_kernels.py::test_encoder_pre_acts_*.
    """
    return torch.addmm(_folded_bias(W_enc, b_enc, b_dec), x, W_enc)


def _folded_bias(W_enc: Tensor, b_enc: Tensor | None, b_dec: Tensor | None) -> Tensor:
    """b_enc - b_dec @ W_enc [d_sae] (either term left out when None): (x - b_dec) @ W_enc + b_enc
    == x @ W_enc + this."""
    bias = b_enc if b_enc is not None else W_enc.new_zeros(W_enc.shape[1])
    return bias - b_dec @ W_enc if b_dec is not None else bias


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor,
                  b_dec: Tensor | None = None) -> Tensor:
    """indices, values [B, k] -> x̂ [B, d_in] = Σ_j values[:, j] · W_dec[indices[:, j]] (+ b_dec).

    Equals ``zeros(B, d_sae).scatter(-1, indices, values) @ W_dec + b_dec``, forward and backward
    (tests/test_kernels.py::test_sparse_decode_equals_dense_forward_and_gradients). An embedding-bag
    lookup: B·k·d_in multiply-adds instead of B·d_sae·d_in, and its backward writes gradient only
    into the selected rows of W_dec (and into values).
    """
    out = torch.nn.functional.embedding_bag(indices, W_dec,
                                            per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return out + b_dec if b_dec is not None else out


class TopKCode(NamedTuple):
    """What ``topk_encode`` returns."""

    values: Tensor
    """[B, k] ReLU of the k largest pre-activations of each row (differentiable)."""
    indices: Tensor
    """[B, k] which latents they are (no gradient)."""
    pre: Tensor
    """[B, d_sae] all pre-activations (differentiable: AuxK reads the dead latents' ones)."""


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, k: int) -> TopKCode:
    """pre = (x - b_dec) @ W_enc + b_enc; (values, indices) = ReLU(TopK_k(pre)) per row.

    Equals ``encoder_pre_acts`` followed by ``pre.topk(k)`` and a ReLU, forward and backward
    (tests/test_kernels.py::test_topk_encode_*); only the backward differs in cost, see _TopKEncode.
    """
    return TopKCode(*_TopKEncode.apply(x, W_enc, _folded_bias(W_enc, b_enc, b_dec), k))


class _TopKEncode(torch.autograd.Function):
    """pre = x @ W_enc + bias, then the TopK selection: (values [B, k], indices [B, k],
    pre [B, d_sae]).

    Backward: when nothing downstream used ``pre`` itself (AuxK idle), the loss depends on the k
    selected pre-activations per row only, so W_enc's gradient is accumulated from those B·k columns
    (B·k·d_in work) instead of the dense x^T @ G matmul (B·d_in·d_sae). When AuxK did use ``pre``,
    the gradient is dense anyway and the ordinary matmul is used.
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
        g_sel = grad_values * active if grad_values is not None else None     # [B, k]: ReLU's mask
        if grad_pre is not None:                                             # dense: AuxK used pre
            G = grad_pre.clone() if g_sel is None else grad_pre.scatter_add(1, indices, g_sel)
            grad_W = x.T @ G if ctx.needs_input_grad[1] else None
            grad_x = G @ W_enc.T if ctx.needs_input_grad[0] else None
            return grad_x, grad_W, G.sum(0), None
        if g_sel is None:
            return None, None, None, None
        flat_idx, flat_g = indices.reshape(-1), g_sel.reshape(-1)          # [B·k]
        grad_bias = g_sel.new_zeros(d_sae).index_add_(0, flat_idx, flat_g)
        grad_W = None
        if ctx.needs_input_grad[1]:  # grad_W[:, j] = Σ_{(b,i): idx=j} g[b,i] · x[b]
            rows_BK_D = x.repeat_interleave(indices.shape[1], dim=0) * flat_g[:, None]
            grad_W = x.new_zeros(d_sae, x.shape[1]).index_add_(0, flat_idx, rows_BK_D).T
        grad_x = (sparse_decode(indices, g_sel, W_enc.T.contiguous())
                  if ctx.needs_input_grad[0] else None)
        return grad_x, grad_W, grad_bias, None


class JumpReLUCode(NamedTuple):
    """What ``jumprelu_l0`` returns."""

    latents: Tensor
    """[B, d_sae] z · H(z - θ)."""
    l0: Tensor
    """[B] Σ_i H(z_i - θ_i), the number of active latents per row (differentiable in θ by the
    STE)."""


def jumprelu_l0(z: Tensor, threshold: Tensor, bandwidth: float) -> JumpReLUCode:
    """z [B, d_sae], θ [d_sae] -> (z · H(z - θ), Σ_i H(z_i - θ_i)), with Rajamanoharan et al.'s
    straight-through gradients (2024, eqs. 11-12), K the rectangle kernel 1[|u| < 1/2]:

        ∂/∂z JumpReLU = H(z - θ)          ∂/∂θ JumpReLU := -(θ/ε) · K((z - θ)/ε)
        ∂/∂z H        = 0                 ∂/∂θ H        := -(1/ε) · K((z - θ)/ε)

    One mask and one kernel evaluation serve both outputs, halving the elementwise passes over
    [B, d_sae]. Tests: tests/test_kernels.py::test_jumprelu_l0_* (forward, gradcheck in z, and the
    θ gradients against the formulas above).
    """
    return JumpReLUCode(*_JumpReLUWithL0.apply(z, threshold, bandwidth))


class _JumpReLUWithL0(torch.autograd.Function):
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
        near = (z - threshold).abs() < eps / 2             # K((z - θ)/ε) for the rectangle kernel
        # d out/dθ = -(θ/ε)·K and d L0/dθ = -(1/ε)·K, chained with their incoming gradients
        per_row = near * (threshold * grad_out + grad_l0[..., None])
        grad_threshold = per_row.sum(dim=tuple(range(z.ndim - 1)))
        return grad_out * mask, -grad_threshold / eps, None


__all__ = ["SPARSE_DECODE_MAX_FRACTION", "encoder_pre_acts", "sparse_decode", "TopKCode",
           "topk_encode", "JumpReLUCode", "jumprelu_l0"]
