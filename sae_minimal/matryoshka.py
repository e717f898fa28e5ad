"""The Matryoshka SAE (Nabeshima 2024; Bussmann, Nabeshima, Karvonen & Nanda 2025,
arXiv:2503.17547).

One dictionary, trained so that every prefix W_dec[:m] is itself a good SAE. With prefix sizes
m_1 < m_2 < ... < m_n = d_sae (e.g. a geometric series 64, 256, 1024, ...):

    x̂_j = f[:m_j] @ W_dec[:m_j] + b_dec
    L   = Σ_j ||x - x̂_j||²   (+ AuxK)

The latents f come from one BatchTopK over the full dictionary, as in Bussmann et al.
(``MatryoshkaSAE``), or from a per-input TopK (``MatryoshkaTopKSAE``); both add the prefix losses
to their parent's loss with ``super()``. The first latents must reconstruct x on their own, so
they learn coarse, general features; later ones add detail instead of splitting the early ones
(less feature absorption).

The prefix reconstructions are built incrementally, group by group, so the extra cost over a plain
SAE is one small matmul per prefix, not one full decode per prefix; on the sparse path, one decode
of the active entries gives them all (``kernels.sparse_prefix_decode``).
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral

from torch import Tensor

from .base import Encoding, mse
from .batchtopk import BatchTopKSAE
from .kernels import sparse_prefix_decode
from .topk import TopKSAE


class _Matryoshka:
    """The Matryoshka part, added in front of a TopK-family SAE: prefix sizes and prefix losses.

    Args:
        prefix_sizes: increasing dictionary sizes whose prefixes are trained as SAEs (integers in
                      [1, d_sae]); ``d_sae`` is appended if missing.
                      Default: d_sae/16, d_sae/4, d_sae.
        All other arguments go to the SAE class it is combined with.
    """

    def __init__(self, d_in: int, d_sae: int, *, prefix_sizes: list[int] | None = None, **kw):
        super().__init__(d_in, d_sae, **kw)
        self.prefix_sizes = check_prefix_sizes(prefix_sizes, d_sae)

    def loss_terms(self, x: Tensor, x_hat: Tensor, enc: Encoding) -> dict[str, Tensor]:
        losses = {}
        # the last prefix is the whole dictionary: the parent's "mse"
        if enc.sparse is not None and len(self.prefix_sizes) > 1:   # one pass, every prefix
            recons = sparse_prefix_decode(enc.sparse, self.W_dec, self.b_dec,
                                          self.prefix_sizes[:-1])
            for j, m in enumerate(self.prefix_sizes[:-1]):
                losses[f"mse_{m}"] = mse(recons[:, j], x)
        else:
            recon_BD, start = self.b_dec.expand_as(x), 0
            for m in self.prefix_sizes[:-1]:
                recon_BD = recon_BD + enc.latents[:, start:m] @ self.W_dec[start:m]
                losses[f"mse_{m}"] = mse(recon_BD, x)
                start = m
        return {**losses, **super().loss_terms(x, x_hat, enc)}

    def config(self) -> dict:
        return {**super().config(), "prefix_sizes": self.prefix_sizes}


def check_prefix_sizes(prefix_sizes: list[int] | None, d_sae: int) -> list[int]:
    """Sorted, unique prefix sizes ending in d_sae; ValueError saying what to pass otherwise."""
    example = f"e.g. [{max(1, d_sae // 16)}, {max(1, d_sae // 4)}]"
    if prefix_sizes is None:
        prefix_sizes = [max(1, d_sae // 16), max(1, d_sae // 4)]
    if isinstance(prefix_sizes, (str, bytes)) or not isinstance(prefix_sizes, Iterable):
        raise ValueError(f"prefix_sizes must be a list of integers, got {prefix_sizes!r}; "
                         f"{example}.")
    prefix_sizes = list(prefix_sizes)
    if not all(isinstance(m, Integral) and not isinstance(m, bool) for m in prefix_sizes):
        raise ValueError("prefix_sizes must be integers (numbers of latents), got "
                         f"{prefix_sizes!r}; {example}.")
    sizes = sorted({int(m) for m in prefix_sizes})
    if not sizes or sizes[0] < 1 or sizes[-1] > d_sae:
        raise ValueError(f"prefix_sizes must be non-empty and lie in [1, d_sae={d_sae}], "
                         f"got {prefix_sizes}.")
    return sizes if sizes[-1] == d_sae else sizes + [d_sae]


class MatryoshkaSAE(_Matryoshka, BatchTopKSAE):
    """Matryoshka SAE with BatchTopK (Bussmann et al. 2025): ``prefix_sizes`` plus BatchTopKSAE's
    arguments (k, k_aux, aux_coeff, dead_window, threshold_momentum)."""


class MatryoshkaTopKSAE(_Matryoshka, TopKSAE):
    """Matryoshka SAE with a per-input TopK: ``prefix_sizes`` plus TopKSAE's arguments."""
