"""Feature splitting across SAE widths (Bricken et al. 2023, "Towards Monosemanticity", sec. Feature
Splitting) and how much of it Matryoshka SAEs undo (Bussmann et al. 2025).

Latents of a narrow SAE ("parents") and a wide one are matched by decoder cosine. A parent *splits*
when several wide latents have it as their nearest narrow latent with a high cosine: each child
covers part of the parent's contexts. Whether the wide SAE still has a latent that fires wherever
the parent fired is measured by the **firing recall**

    recall(p -> q) = #(tokens where p fires and q fires) / #(tokens where p fires)

A wide latent q that points like p but fires on only some of p's tokens has had the rest of p
absorbed or split off into other latents (Chanin et al. 2024, "A is for Absorption", use a
probe-based version of this idea).

Shapes: decoder matrices [n_latents, d_in]; activations x [N, d_in].
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..io import as_sae
from ..metrics import nearest
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


@torch.no_grad()
def firing_recall(sae_a, latents_a: Tensor, sae_b, latents_b: Tensor, x: Tensor,
                  chunk: int = 8192) -> Tensor:
    """[n] for each pair (latents_a[j] of sae_a, latents_b[j] of sae_b): the fraction of the tokens
    in x [N, d_in] where a's latent fires on which b's latent fires too (NaN where a's latent never
    fires). Either SAE may be a SAELens SAE object."""
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


__all__ = ["children", "firing_recall"]
