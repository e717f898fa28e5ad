"""Feature splitting across SAE widths (Bricken et al. 2023, "Towards Monosemanticity", sec. Feature
Splitting) and how much of it Matryoshka SAEs undo (Bussmann et al. 2025).

Latents of a narrow SAE ("parents") and a wide one are matched by decoder cosine. A parent *splits*
when several wide latents have it as their nearest narrow latent with a high cosine: each child
covers part of the parent's contexts. Whether a matched latent q fires where the parent p fired is
measured on the tokens of x, both ways:

    recall(p -> q)    = #(tokens where p and q fire) / #(tokens where p fires)
    precision(p -> q) = #(tokens where p and q fire) / #(tokens where q fires)
    F1                = 2·#(both) / (#p + #q)      (harmonic mean of the two)

Recall alone flatters a dense q: a latent that fires everywhere has recall 1 for every p. Precision
catches that. A child of a split parent has high precision and low recall (it fires on a subset of
the parent's tokens); an unrelated latent has both near chance (recall ≈ q's firing frequency,
precision ≈ p's). Chanin et al. (2024, "A is for Absorption") use a probe-based version of the
same idea.

Firing sets are kept sparse (``Codes``: one entry per token and active latent), so each SAE is
encoded once and any number of comparisons reuse it.

Shapes: decoder matrices [n_latents, d_in]; activations x [N, d_in].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..io import as_sae
from ..metrics import f1_from_counts, nearest
from .validate import check_latents


def children(W_parent: Tensor, W_child: Tensor,
             min_cos: float = 0.5) -> dict[int, list[tuple[int, float]]]:
    """{parent: [(child, cosine), ...]}: the wide latents whose nearest narrow latent is ``parent``
    with a cosine of at least ``min_cos``, most similar first. Parents with no such child are left
    out."""
    cos, idx = nearest(W_child, W_parent)
    family: dict[int, list[tuple[int, float]]] = {}
    for child in (cos >= min_cos).nonzero().squeeze(1).tolist():
        family.setdefault(int(idx[child]), []).append((child, float(cos[child])))
    return {p: sorted(kids, key=lambda kc: -kc[1]) for p, kids in family.items()}


class Codes(NamedTuple):
    """An SAE's latent activations on N tokens, sparse: entry e says latent ``latents[e]`` fired
    on token ``rows[e]`` with activation ``values[e]`` (> 0). Build with ``encode_sparse``."""

    rows: Tensor      # [nnz] long, token index in [0, n_tokens)
    latents: Tensor   # [nnz] long, latent index in [0, d_sae)
    values: Tensor    # [nnz] float
    n_tokens: int
    d_sae: int

    def counts(self) -> Tensor:
        """[d_sae] long: on how many of the N tokens each latent fires."""
        return torch.bincount(self.latents, minlength=self.d_sae)

    def density(self) -> Tensor:
        """[d_sae] firing frequency (fraction of the N tokens)."""
        return self.counts().float() / max(self.n_tokens, 1)

    def top(self, latent: int, n: int = 5) -> tuple[Tensor, Tensor]:
        """(activations [≤n], token rows [≤n]) of ``latent``'s n largest activations, largest
        first (fewer if it fires on fewer tokens)."""
        latent = int(check_latents([latent], self.d_sae, name="latent")[0])
        mine = (self.latents == latent).nonzero().squeeze(1)
        best = self.values[mine].topk(min(n, len(mine)))
        return best.values, self.rows[mine[best.indices]]


@torch.no_grad()
def encode_sparse(sae, x: Tensor, chunk: int = 8192) -> Codes:
    """Encode x [N, d_in] once with ``sae`` (ours or a SAELens SAE object) and keep only the
    latents that fire (activation > 0). Memory: about 24 bytes per active entry, i.e. N·L0·24."""
    sae = as_sae(sae)
    if x.ndim != 2:
        raise ValueError(f"x must be [N, d_in] activations, got shape {tuple(x.shape)}; flatten "
                         "batch and position first (x.reshape(-1, d_in)).")
    if not len(x):
        raise ValueError("x holds no activations: pass at least one row.")
    rows, latents, values = [], [], []
    for start in range(0, len(x), chunk):
        f = sae.encode(x[start:start + chunk])              # [chunk, d_sae]
        r, c = (f > 0).nonzero(as_tuple=True)
        rows.append(r + start), latents.append(c), values.append(f[r, c].float().cpu())
    d_sae = int(getattr(sae, "d_sae", f.shape[-1]))
    cat = (lambda parts, dtype: torch.cat(parts).cpu() if parts else torch.zeros(0, dtype=dtype))
    return Codes(cat(rows, torch.long), cat(latents, torch.long), cat(values, torch.float),
                 len(x), d_sae)


class Overlap(NamedTuple):
    """Firing overlap of latent pairs (p_j, q_j), each [n]; NaN where a denominator is 0."""

    recall: Tensor     # #(p and q) / #p: of p's tokens, the share where q fires too
    precision: Tensor  # #(p and q) / #q: of q's tokens, the share where p fires too
    f1: Tensor         # 2·#(p and q) / (#p + #q)
    n_p: Tensor        # #p, tokens where p fires
    n_q: Tensor        # #q


def overlap_from_counts(both: Tensor, n_p: Tensor, n_q: Tensor) -> Overlap:
    """``Overlap`` from the counts of tokens where both / p / q fire (each [n])."""
    both, n_p, n_q = both.double(), n_p.double(), n_q.double()
    nan = torch.tensor(float("nan"), dtype=torch.double)
    ratio = (lambda num, den: torch.where(den > 0, num / den.clamp_min(1), nan).float())
    return Overlap(ratio(both, n_p), ratio(both, n_q),
                   f1_from_counts(both, n_p, n_q, empty=float("nan")).float(), n_p.long(),
                   n_q.long())


def firing_overlap(codes_p: Codes, latents_p, codes_q: Codes, latents_q) -> Overlap:
    """Recall, precision and F1 (module docstring) of each pair (latents_p[j] of the SAE behind
    ``codes_p``, latents_q[j] of the one behind ``codes_q``), on the same tokens. Latents may
    repeat (several narrow latents can share one nearest wide latent)."""
    if codes_p.n_tokens != codes_q.n_tokens:
        raise ValueError(f"codes_p covers {codes_p.n_tokens} tokens and codes_q {codes_q.n_tokens}: "
                         "encode the same activations x with both SAEs.")
    latents_p = check_latents(latents_p, codes_p.d_sae, name="latents_p")
    latents_q = check_latents(latents_q, codes_q.d_sae, name="latents_q")
    if len(latents_p) != len(latents_q):
        raise ValueError(f"latents_p ({len(latents_p)}) and latents_q ({len(latents_q)}) must "
                         "pair up one to one: pass two index lists of the same length.")
    n = len(latents_p)
    counts_q = codes_q.counts()
    # q's tokens grouped by latent (CSC order), then, for every pair j, the tokens where q_j fires
    order = codes_q.latents.argsort(stable=True)
    rows_q = codes_q.rows[order]
    start = counts_q.cumsum(0) - counts_q                     # [d_sae_q] first entry of each latent
    lens = counts_q[latents_q]                                 # [n]
    pair = torch.repeat_interleave(torch.arange(n), lens)     # [total] pair of each entry
    offset = torch.arange(len(pair)) - torch.repeat_interleave(lens.cumsum(0) - lens, lens)
    rows = rows_q[start[latents_q][pair] + offset]
    # ... and of those, the ones where p_j fires too: look the (token, p_j) keys up in p's set
    key_p = codes_p.rows * codes_p.d_sae + codes_p.latents
    hit = torch.isin(rows * codes_p.d_sae + latents_p[pair], key_p)
    both = torch.bincount(pair[hit], minlength=n)
    return overlap_from_counts(both, codes_p.counts()[latents_p], lens)


def precision_recall(fires_p: Tensor, fires_q: Tensor) -> tuple[Tensor, Tensor]:
    """(precision [n], recall [n]) of q_j against p_j from dense boolean masks fires_p, fires_q
    [N, n] (column j: where p_j / q_j fire). NaN where p_j (recall) or q_j (precision) never
    fires. The small dense version of ``firing_overlap``, for a handful of latents."""
    if fires_p.shape != fires_q.shape or fires_p.ndim != 2:
        raise ValueError(f"fires_p and fires_q must both be [N, n] masks of the same shape, got "
                         f"{tuple(fires_p.shape)} and {tuple(fires_q.shape)}.")
    fires_p, fires_q = fires_p.bool(), fires_q.bool()
    o = overlap_from_counts((fires_p & fires_q).sum(0), fires_p.sum(0), fires_q.sum(0))
    return o.precision, o.recall


@torch.no_grad()
def firing_recall(sae_a, latents_a: Tensor, sae_b, latents_b: Tensor, x: Tensor,
                  chunk: int = 8192) -> Tensor:
    """[n] for each pair (latents_a[j] of sae_a, latents_b[j] of sae_b): the fraction of the tokens
    in x [N, d_in] where a's latent fires on which b's latent fires too (NaN where a's latent never
    fires). Either SAE may be a SAELens SAE object. Recall only: see ``firing_overlap`` for
    precision and F1 beside it."""
    sae_a, sae_b = as_sae(sae_a), as_sae(sae_b)
    # duck-typed SAEs without d_sae (anything with .encode) get their indices checked by torch
    latents_a = check_latents(latents_a, getattr(sae_a, "d_sae", None), name="latents_a")
    latents_b = check_latents(latents_b, getattr(sae_b, "d_sae", None), name="latents_b")
    if len(latents_a) != len(latents_b):
        raise ValueError(f"latents_a ({len(latents_a)}) and latents_b ({len(latents_b)}) must "
                         "pair up one to one: pass two index lists of the same length.")
    both = torch.zeros(len(latents_a))
    fired = torch.zeros(len(latents_a))
    for batch in x.split(chunk):
        fa = sae_a.encode(batch)[:, latents_a] > 0
        fb = sae_b.encode(batch)[:, latents_b] > 0
        both += (fa & fb).sum(0)
        fired += fa.sum(0)
    return torch.where(fired > 0, both / fired.clamp_min(1), torch.full_like(fired, float("nan")))


def token_shares(tokens: Tensor, positions: Tensor) -> dict[str, tuple[int, float]]:
    """What a set of contexts has in common, computed rather than eyeballed: for token positions
    (window, position) [n, 2] into tokens [n_windows, context], the most common token at the
    position ("token") and just before it ("previous"), each as (token id, share of the n
    contexts)."""
    if positions.ndim != 2 or positions.shape[1] != 2 or not len(positions):
        raise ValueError("positions must be a non-empty [n, 2] tensor of (window, position) "
                         f"pairs, got shape {tuple(positions.shape)}.")
    window, pos = positions[:, 0], positions[:, 1]
    if int(pos.min()) < 1:
        raise ValueError("positions must be >= 1 so that every context has a previous token.")
    out = {}
    for label, ids in (("token", tokens[window, pos]), ("previous", tokens[window, pos - 1])):
        values, counts = ids.unique(return_counts=True)
        best = int(counts.argmax())
        out[label] = (int(values[best]), float(counts[best]) / len(ids))
    return out


__all__ = ["children", "Codes", "encode_sparse", "Overlap", "overlap_from_counts",
           "firing_overlap", "precision_recall", "firing_recall", "token_shares"]
