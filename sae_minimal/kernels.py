"""Speed code, kept apart from the variants so those read like their papers.

Each function here equals a plain formula, written in its docstring, and a test proves it (named
there): the variant files call these where the fast path applies and say which formula they stand
for.

    encoder_pre_acts      (x - b_dec) @ W_enc + b_enc, with b_dec folded into the bias
    sparse_encode         the same pre-activations, plus the entries a rule keeps (ReLU > 0, TopK,
                          BatchTopK, JumpReLU > θ, an open gate) as a SparseCode whose backward
                          touches only those entries (W_enc's gradient from nnz columns, not B)
    sparse_decode         Σ_e values_e · W_dec[indices_e] (+ b_dec): decode the entries, not d_sae
    code_t_matmul         Zᵀ @ source for a code Z kept as entries: W_enc's and W_dec's gradients
    pre_entries           pre[rows, indices], its gradient sent to the encoder from those entries
                          (AuxK's), not through a dense [B, d_sae] gradient of pre
    sparse_prefix_decode  Matryoshka's nested reconstructions Z[:, :m] @ W_dec[:m] in one pass
    flat_entries, topk_entries, batch_topk_entries
                          which entries a code keeps (BatchTopK's without a sort of B·d_sae values)
    jumprelu_l0           JumpReLU and its L0 count in one pass, with the straight-through
                          threshold gradients (per latent, or per entry of a SparseCode)

Sparse or dense is decided per batch: a code whose density (kept entries / all B·d_sae) is at most
``sparse_max_density(device)`` takes the sparse path. That crossover depends on the device: the
CPU's is measured (``SPARSE_MAX_DENSITY``), any other device type measures its own on first use
(``measure_sparse_crossover``, about a second on a GPU).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# Code density (kept entries / all entries) up to which the sparse path beats the dense matmuls,
# per device type. "cpu" was measured on the 2-core CI machine with measure_sparse_crossover()
# (python benchmarks/bench_train.py --crossover; a ReLU SAE step at d_in 768, d_sae 16384, batch
# 2048: sparse 1.2x faster at density 1/16, 0.64x at 1/8). Other device types measure theirs on
# first use; set an entry to override it (0 = never sparse), or to skip the measurement.
SPARSE_MAX_DENSITY: dict[str, float] = {"cpu": 0.088}
# An entry's gradient alone (one dot product, the decoder backward's share of an entry's four
# passes) is worth computing entry by entry up to a density that falls as d_in grows: the dense
# product grad_x̂ @ W_decᵀ runs nearer the matmul peak at a larger d_in, while each entry's dot
# gathers one row of W_dec. Measured on the CI machine (one thread, batch 1024), dots vs product
# broke even at density ~14% for d_in 256 x d_sae 2048, ~11% at 256 x 8192, ~7% at 768 x 4096 and
# ~4% at 768 x 24576. So entry by entry up to sparse_max_density · min(1, DOT_D_IN / d_in): the full
# crossover at d_in <= 256 (a JumpReLU-2048 with its STE window, 4.4% dense: 2x faster backward,
# 20% faster step), a third of it at d_in 768, as before.
DOT_D_IN = 256


def sparse_max_density(device: torch.device | str) -> float:
    """The density up to which the sparse paths pay on ``device``'s type (measured once per
    process for a type not in SPARSE_MAX_DENSITY)."""
    kind = torch.device(device).type
    if kind not in SPARSE_MAX_DENSITY:
        try:
            SPARSE_MAX_DENSITY[kind] = measure_sparse_crossover(device)
        except (RuntimeError, NotImplementedError) as e:   # an op missing on this backend
            warnings.warn(f"Could not measure the sparse/dense crossover on {kind} ({e}); "
                          "using the dense path there.", stacklevel=2)
            SPARSE_MAX_DENSITY[kind] = 0.0
    return SPARSE_MAX_DENSITY[kind]


def dot_max_density(device: torch.device | str, d_in: int) -> float:
    """The code density up to which the decoder backward computes each entry's gradient by its
    own dot product (above it: one dense product)."""
    return sparse_max_density(device) * min(1.0, DOT_D_IN / d_in)


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


# --- a code kept as its entries -------------------------------------------------------------------
class SparseCode(NamedTuple):
    """A code Z [B, d_sae] kept as its entries, row by row (ascending latent within a row); every
    other entry of Z is zero. ``offsets`` is what ``F.embedding_bag`` calls offsets."""

    values: Tensor
    """[nnz] Z at the entries (differentiable)."""
    indices: Tensor
    """[nnz] the latent of each entry."""
    rows: Tensor
    """[nnz] the input row of each entry (non-decreasing)."""
    offsets: Tensor
    """[B] where each row's entries start in the three arrays above."""

    def dense(self, d_sae: int) -> Tensor:
        """Z [B, d_sae], detached (for metrics and the outputs, not for gradients)."""
        Z = self.values.new_zeros(len(self.offsets), d_sae)
        return Z.index_put_((self.rows, self.indices), self.values.detach())


def code_t_matmul(indices: Tensor, rows: Tensor, weights: Tensor, source: Tensor,
                  n_latents: int) -> Tensor:
    """Zᵀ @ source [n_latents, d] for the code Z [B, n_latents] with Z[rows_e, indices_e] +=
    weights_e, and source [B, d]: row j of the result is Σ_{e: indices_e = j} weights_e ·
    source[rows_e].

    Equals ``zeros(B, n).index_put((rows, indices), weights, accumulate=True).T @ source``
    (tests/test_kernels.py::test_code_t_matmul_equals_the_dense_product). The entries are grouped
    by latent and each group summed by one embedding-bag call: nnz·d multiply-adds, no [nnz, d]
    copy of the gathered rows (the gradients of W_enc and W_dec of a sparse code are this product).
    """
    order = indices.sort(stable=True).indices       # stable: a radix sort for integers
    counts = torch.bincount(indices, minlength=n_latents)
    return F.embedding_bag(rows[order], source, counts.cumsum(0) - counts,
                           per_sample_weights=weights[order].to(source.dtype), mode="sum")


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor | None = None,
                  *, offsets: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """x̂ [B, d_in] = Σ_j values[:, j] · W_dec[indices[:, j]] (+ b_dec) for indices, values
    [B, k]; or, with ``offsets`` and ``rows`` (a SparseCode's), for flat entries [nnz].

    Equals ``Z @ W_dec + b_dec`` with Z the dense code, forward and backward
    (tests/test_kernels.py::test_sparse_decode_*): an embedding-bag lookup, nnz·d_in multiply-adds
    instead of B·d_sae·d_in. Its backward computes each entry's gradient
    grad_x̂[row]·W_dec[index] and W_dec's gradient Zᵀ @ grad_x̂ (``code_t_matmul``) from the
    entries: rows of W_dec that no entry used get a zero gradient, at no cost.
    """
    if offsets is None:                          # [B, k]: every row keeps k entries
        B, k = indices.shape
        rows = torch.arange(B, device=indices.device).repeat_interleave(k)
        offsets = torch.arange(0, B * k, k, device=indices.device)
        indices, values = indices.reshape(-1), values.reshape(-1)
    out = _SparseDecode.apply(indices, values.to(W_dec.dtype), W_dec, offsets, rows)
    return out + b_dec if b_dec is not None else out


def decode_code(code: SparseCode, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """x̂ [B, d_in] = Z @ W_dec (+ b_dec) for a SparseCode Z (``sparse_decode``)."""
    return sparse_decode(code.indices, code.values, W_dec, b_dec, offsets=code.offsets,
                         rows=code.rows)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, indices: Tensor, values: Tensor, W_dec: Tensor, offsets: Tensor,
                rows: Tensor):
        ctx.save_for_backward(indices, values, W_dec, offsets, rows)
        n = len(indices)        # entries of value 0 (JumpReLU's window) only need a gradient
        values, indices, rows = _without_zeros(values, indices, rows)
        if len(indices) == 0:
            return W_dec.new_zeros(len(offsets), W_dec.shape[1])
        if len(indices) < n:
            counts = torch.bincount(rows, minlength=len(offsets))
            offsets = counts.cumsum(0) - counts
        return F.embedding_bag(indices, W_dec, offsets, per_sample_weights=values, mode="sum")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        indices, values, W_dec, offsets, rows = ctx.saved_tensors
        grad_values = grad_W = None
        if ctx.needs_input_grad[1]:   # ∂x̂[row]/∂values_e = W_dec[index_e]: one dot per entry,
            B, d_sae = len(offsets), W_dec.shape[0]    # or, for many entries, one dense product
            if len(indices) > dot_max_density(W_dec.device, W_dec.shape[1]) * B * d_sae:
                grad_values = (grad_out @ W_dec.T).view(-1)[rows * d_sae + indices]
            else:
                grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                    grad_out.contiguous(), W_dec, indices, offsets, rows, 0, -1)
        if ctx.needs_input_grad[2]:    # entries of value 0 (JumpReLU's window) add nothing
            values, indices, rows = _without_zeros(values, indices, rows)
            if len(indices):
                grad_W = code_t_matmul(indices, rows, values, grad_out.contiguous(),
                                       W_dec.shape[0])
        return None, grad_values, grad_W, None, None


def _without_zeros(key: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """(key, *others) restricted to the entries where key != 0 (all of them, uncopied, if none
    is 0)."""
    kept = key != 0
    if bool(kept.all()):
        return (key, *others)
    if not bool(kept.any()):
        return tuple(t[:0] for t in (key, *others))
    return tuple(t[kept] for t in (key, *others))


def sparse_prefix_decode(code: SparseCode, W_dec: Tensor, b_dec: Tensor,
                         prefix_sizes: list[int]) -> Tensor:
    """[B, n, d_in]: x̂_j = Z[:, :m_j] @ W_dec[:m_j] + b_dec for the n prefix sizes m_1 < ... < m_n
    (entries of latents >= m_n play no part).

    Equals ``stack([Z[:, :m] @ W_dec[:m] + b_dec for m in prefix_sizes], 1)``, forward and backward
    (tests/test_kernels.py::test_sparse_prefix_decode_*): the entries are decoded once, each into
    the bag of its (row, group between two prefix sizes), and a cumulative sum over the groups
    gives every prefix -- instead of one dense matmul per group.
    """
    B, n = len(code.offsets), len(prefix_sizes)
    values, indices, rows = code.values, code.indices, code.rows
    inside = indices < prefix_sizes[-1]                          # latents past m_n play no part
    values, indices, rows = values[inside], indices[inside], rows[inside]
    bounds = torch.tensor(prefix_sizes, device=indices.device)
    group = torch.bucketize(indices, bounds, right=True)         # first j with index < m_j
    bags = rows * n + group                                      # non-decreasing: rows are sorted
    counts = torch.bincount(bags, minlength=B * n)
    parts = sparse_decode(indices, values, W_dec, offsets=counts.cumsum(0) - counts, rows=bags)
    return parts.reshape(B, n, -1).cumsum(1) + b_dec


# --- encoding into a SparseCode -----------------------------------------------------------------
Select = Callable[[Tensor], Tensor]
"""pre [B, d_sae] -> the entries to keep: a bool mask [B, d_sae], or ascending flat indices into
pre.view(-1)."""


def sparse_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor | None, b_dec: Tensor | None,
                  select: Select, max_density: float) -> tuple[Tensor, SparseCode | None]:
    """pre = (x - b_dec) @ W_enc + b_enc [B, d_sae], and the entries ``select(pre)`` keeps as a
    SparseCode with values pre[entries] -- or None when they are more than ``max_density`` of
    all B·d_sae entries (then use pre, the dense path).

    Equals ``encoder_pre_acts`` and ``pre[mask]``, forward and backward
    (tests/test_kernels.py::test_sparse_encode_*). Only the backward differs in cost: when the loss
    reached pre only through the entries' values, W_enc's gradient is accumulated from those nnz
    entries (``code_t_matmul``, nnz·d_in work) instead of the dense xᵀ @ G (B·d_in·d_sae). A term
    that used pre itself gives a dense gradient; if that too is non-zero on at most
    ``max_density`` of the entries, its entries join the sparse product (a term that reads a few
    entries of pre, as AuxK does, is cheaper through ``pre_entries``).
    """
    if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)   # the matmuls in autocast's precision:
        x, W_enc, b_enc, b_dec = (t.to(dtype) if t is not None else None   # cast here, as
                                  for t in (x, W_enc, b_enc, b_dec))         # autocast would
    pre, values, indices, rows, offsets = _SparseEncode.apply(x, W_enc, b_enc, b_dec, select,
                                                              max_density)
    return pre, (SparseCode(values, indices, rows, offsets) if values is not None else None)


class _SparseEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor | None, b_dec: Tensor | None,
                select: Select, max_density: float):
        pre = torch.addmm(_folded_bias(W_enc, b_enc, b_dec), x, W_enc)
        ctx.set_materialize_grads(False)
        ctx.max_density = max_density
        ctx.save_for_backward(x, W_enc, b_dec)
        ctx.entries = None
        B, d_sae = pre.shape
        keep = select(pre)
        if keep.dtype == torch.bool:
            if int(torch.count_nonzero(keep)) > max_density * keep.numel():
                return pre, None, None, None, None
            keep = keep.view(-1).nonzero().squeeze(1)
        elif keep.numel() > max_density * pre.numel():
            return pre, None, None, None, None
        rows, indices, offsets = flat_entries(keep, B, d_sae)
        ctx.entries = rows, indices
        ctx.mark_non_differentiable(indices, rows, offsets)
        return pre, pre.view(-1)[keep], indices, rows, offsets

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pre, grad_values, _indices, _rows, _offsets):
        """The gradients of pre = (x - b_dec) @ W_enc + b_enc, given G = ∂L/∂pre as a dense
        grad_pre and/or the entries' grad_values: W_enc: (x - b_dec)ᵀ G; b_enc: Σ_b G;
        b_dec: -W_enc @ Σ_b G (a vector product, no [B, d_in] intermediate); x: G @ W_encᵀ."""
        x, W_enc, b_dec = ctx.saved_tensors
        need_x, need_W, need_b_enc, need_b_dec = ctx.needs_input_grad[:4]
        B, d_sae = x.shape[0], W_enc.shape[1]
        rows, indices = ctx.entries if ctx.entries is not None else (None, None)
        if grad_pre is not None and rows is not None:    # a term used pre: is its gradient sparse?
            if int(torch.count_nonzero(grad_pre)) <= ctx.max_density * grad_pre.numel():
                more = grad_pre.view(-1).nonzero().squeeze(1)
                more_rows, more_indices, _ = flat_entries(more, B, d_sae)
                g_more = grad_pre.view(-1)[more]
                if grad_values is None:                   # the code's values were not used
                    rows, indices, grad_values = more_rows, more_indices, g_more
                else:
                    rows, indices = torch.cat([rows, more_rows]), torch.cat([indices, more_indices])
                    grad_values = torch.cat([grad_values, g_more])
                grad_pre = None
        if grad_pre is None and grad_values is None:
            return None, None, None, None, None, None
        if grad_pre is None:
            return (*_entry_grads(ctx.needs_input_grad[:4], x, W_enc, b_dec, rows, indices,
                                  grad_values), None, None)
        G = grad_pre                                      # the dense backward of addmm
        if grad_values is not None:
            G = grad_pre.index_put((rows, indices), grad_values, accumulate=True)
        g_sum = G.sum(0)
        grad_W = (x - b_dec if b_dec is not None else x).T @ G if need_W else None
        grad_x = G @ W_enc.T if need_x else None
        grad_b_dec = -(W_enc @ g_sum.to(W_enc.dtype)) if need_b_dec else None
        return grad_x, grad_W, g_sum if need_b_enc else None, grad_b_dec, None, None


def _entry_grads(needs: tuple[bool, ...], x: Tensor, W_enc: Tensor, b_dec: Tensor | None,
                 rows: Tensor, indices: Tensor, g: Tensor) -> tuple[Tensor | None, ...]:
    """The gradients (x, W_enc, b_enc, b_dec; None where ``needs`` is False) of
    pre = (x - b_dec) @ W_enc + b_enc when ∂L/∂pre is g at the entries (rows, indices) and 0
    elsewhere: W_enc: (x - b_dec)ᵀ G and x: G @ W_encᵀ from the entries (``code_t_matmul``);
    b_enc: Σ_b G; b_dec: -W_enc @ Σ_b G (a vector product, no [B, d_in] intermediate)."""
    need_x, need_W, need_b_enc, need_b_dec = needs
    B, d_sae = x.shape[0], W_enc.shape[1]
    g, indices, rows = _without_zeros(g, indices, rows)   # e.g. JumpReLU's window: adds nothing
    g_sum = g.new_zeros(d_sae).index_add_(0, indices, g)
    centred = x - b_dec if b_dec is not None else x
    grad_W = code_t_matmul(indices, rows, g, centred, d_sae).T if need_W else None
    grad_x = (code_t_matmul(rows, indices, g, W_enc.T.contiguous(), B)
              if need_x else None)                        # Z @ W_encᵀ = (Zᵀ)ᵀ @ W_encᵀ
    grad_b_dec = -(W_enc @ g_sum.to(W_enc.dtype)) if need_b_dec else None
    return grad_x, grad_W, g_sum if need_b_enc else None, grad_b_dec


def pre_entries(pre: Tensor, rows: Tensor, indices: Tensor, x: Tensor, W_enc: Tensor,
                b_enc: Tensor | None, b_dec: Tensor | None) -> Tensor:
    """pre[rows, indices] [n] for pre = (x - b_dec) @ W_enc + b_enc [B, d_sae] already computed,
    with the gradients going from these n entries straight to x, W_enc, b_enc and b_dec.

    Equals ``encoder_pre_acts(x, W_enc, b_enc, b_dec)[rows, indices]``, forward and backward
    (tests/test_kernels.py::test_pre_entries_*). For a loss term that reads a few entries of pre
    (AuxK: k_aux per row, of the dead columns): the plain gather gives pre a dense [B, d_sae]
    gradient, which the encoder's backward must then scan for its non-zeros (a TopK-8192 step
    on the CPU spent a third of its time there); this costs n·d_in.
    """
    return _PreEntries.apply(pre.detach(), rows, indices, x, W_enc, b_enc, b_dec)


class _PreEntries(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, rows, indices, x, W_enc, b_enc, b_dec):
        ctx.save_for_backward(rows, indices, x, W_enc, b_dec)
        return pre[rows, indices]

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        rows, indices, x, W_enc, b_dec = ctx.saved_tensors
        return (None, None, None,
                *_entry_grads(ctx.needs_input_grad[3:], x, W_enc, b_dec, rows, indices, g))


def flat_entries(flat: Tensor, B: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor]:
    """Ascending flat indices into a [B, d_sae] code -> (rows, indices, offsets) of a
    SparseCode."""
    rows = torch.div(flat, d_sae, rounding_mode="floor")
    counts = torch.bincount(rows, minlength=B)
    return rows, flat - rows * d_sae, counts.cumsum(0) - counts


def topk_entries(pre: Tensor, k: int) -> Tensor:
    """Ascending flat indices of the entries TopK keeps: the k largest of each row of pre
    [B, d_sae], the positive ones (ReLU(TopK_k(pre)) is zero elsewhere)."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    base = torch.arange(pre.shape[0], device=pre.device)[:, None] * pre.shape[1]
    flat = indices + base
    positive = values > 0
    return (flat if bool(positive.all()) else flat[positive]).view(-1).sort().values


def batch_topk_entries(pre: Tensor, k: int) -> Tensor:
    """Ascending flat indices of the k·B largest entries of ReLU(pre) [B, d_sae] over the whole
    batch, the positive ones: ``relu(pre).flatten().topk(k * B)``'s positive picks, sorted.

    Fast path (tests/test_kernels.py::test_batch_topk_entries_*): a threshold t read off a sample
    of ~65k entries sits below the (k·B)-th largest value; the top k·B of the entries above t are
    the top k·B of all, so the selection runs on ~2·k·B survivors instead of B·d_sae values
    (a full topk over 4096 x 4096 entries is a large part of a CPU step). When fewer than k·B
    entries pass t (an unlucky sample), it falls back to all of them: the result is always exact.
    """
    flat = pre.reshape(-1)
    n, n_keep = flat.numel(), min(k * pre.shape[0], flat.numel())
    candidates = None
    if n >= 64 * n_keep and n >= 2**17:
        candidates = (flat > _sampled_threshold(flat, n_keep, pre.shape[1])).nonzero().squeeze(1)
        if len(candidates) < n_keep:
            candidates = None
    if candidates is None:
        values, picked = flat.topk(n_keep, sorted=False)
    else:
        values, picked = flat[candidates].topk(n_keep, sorted=False)
        picked = candidates[picked]
    return picked[values > 0].sort().values


def _sampled_threshold(flat: Tensor, n_keep: int, d_sae: int) -> Tensor:
    """A value that about 2·n_keep entries of ``flat`` exceed, read off a sample of ~65k of them
    (a stride coprime to d_sae, so that every latent's column is sampled)."""
    stride = flat.numel() // 2**16 | 1
    while math.gcd(stride, d_sae) != 1:
        stride += 2
    sample = flat[::stride]
    rank = min(len(sample), 2 * math.ceil(n_keep * len(sample) / flat.numel()) + 32)
    return sample.topk(rank).values[-1]


# --- JumpReLU -------------------------------------------------------------------------------------
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
    [B, d_sae]. θ may also have z's shape (one threshold per entry: the sparse path passes
    z [nnz, 1] and θ[indices] [nnz, 1], and gets each entry's step as ``l0`` [nnz]).
    Tests: tests/test_kernels.py::test_jumprelu_l0_* (forward, gradcheck in z, and the θ
    gradients against the formulas above).
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
        per_entry = near * (threshold * grad_out + grad_l0[..., None])
        grad_threshold = per_entry.sum_to_size(threshold.shape)
        return grad_out * mask, -grad_threshold / eps, None


# --- the crossover ------------------------------------------------------------------------------
def measure_sparse_crossover(device: torch.device | str, *, d_in: int = 768, d_sae: int = 16384,
                             batch: int = 2048, repeats: int = 3, verbose: bool = False) -> float:
    """The code density below which a ReLU SAE's sparse forward + backward (``sparse_encode``,
    ``decode_code``) beats the dense one on ``device``: both are timed at densities 1/1024 ...
    1/2; returns the geometric middle between the last density where sparse wins and the first
    where it loses (0 if it never wins, 1/2 if it always does). Running out of memory at a
    density counts as a loss there: it ends the search instead of the caller's crossover (a GPU
    build of two runs side by side fell back to the dense path for good that way). fp32, outside
    any autocast; ``verbose`` prints the times."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, d_in, generator=gen).to(device)
    W_enc = (torch.randn(d_in, d_sae, generator=gen) / d_in**0.5).to(device).requires_grad_()
    W_dec = W_enc.detach().T.contiguous().requires_grad_()
    b_enc = torch.zeros(d_sae, device=device, requires_grad=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(threshold: float, sparse: bool) -> None:
        pre, code = sparse_encode(x, W_enc, b_enc, None, lambda p: p > threshold,
                                  1.0 if sparse else -1.0)
        x_hat = decode_code(code, W_dec) if sparse else (pre * (pre > threshold)) @ W_dec
        (x_hat - x).pow(2).sum().backward()

    def seconds(threshold: float, sparse: bool) -> float:
        step(threshold, sparse)                     # warm-up
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            step(threshold, sparse)
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        sample = (x[:256] @ W_enc.detach()).flatten()
        last_win = 0.0
        for density in [2.0**-e for e in range(10, 0, -1)]:
            threshold = float(sample.quantile(1 - density))
            try:
                sparse, dense = seconds(threshold, True), seconds(threshold, False)
            except torch.OutOfMemoryError:   # the sparse path's [nnz]-sized buffers at a dense
                sparse, dense = math.inf, 0.0    # code (or a GPU shared with other runs): a loss
            finally:
                if device.type == "cuda":    # give back what the timings cached, for training
                    torch.cuda.empty_cache()
            if verbose:
                print(f"density {density:.4f}: sparse {sparse * 1e3:7.1f} ms, "
                      f"dense {dense * 1e3:7.1f} ms ({dense / sparse:.2f}x)")
            if sparse >= dense:
                return math.sqrt(last_win * density) if last_win else 0.0
            last_win = density
    return 0.5


__all__ = ["SPARSE_MAX_DENSITY", "sparse_max_density", "encoder_pre_acts", "SparseCode",
           "code_t_matmul", "sparse_decode", "decode_code", "sparse_prefix_decode",
           "sparse_encode", "pre_entries", "flat_entries", "topk_entries", "batch_topk_entries",
           "JumpReLUCode", "jumprelu_l0", "measure_sparse_crossover", "dot_max_density"]
