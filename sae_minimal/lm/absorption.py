"""Feature absorption (Chanin et al. 2024, "A is for Absorption"): a general latent that fails to
fire where a more specific latent has taken its place.

    main, f1 = main_latents(sae, x_train, y_train)   # the latent(s) standing for the parent
    cos = decoder_cosines(sae, direction)             # [d_sae] each decoder vs the property
    absorption_rate(codes_test, y_test, main, cos, tau=0.2)

Chanin et al.'s recipe, simplified: (1) a linear probe on the residual shows the model represents
the property (keep the tokens it gets right), and the property's direction is given, e.g. by the
difference of class means (``steering.mean_difference``: the *pattern* the property adds to the
activation, which is what a decoder row is comparable to; a probe's weight vector is a *filter*
and on an anisotropic residual stream points elsewhere, Haufe et al. 2014); (2) the SAE's *main*
latents for the property are the fewest latents whose firing best predicts it (F1, greedy, each
added latent must raise F1 by ``min_gain``, like their k-sparse probing with a threshold); (3) on a
held-out token that has the property, the main latents are silent, yet another latent that fires
has a decoder aligned with the direction (cosine >= ``tau``): that latent has *absorbed* the parent for this token. The
absorption rate is the fraction of the property's tokens where this happens. Their full metric also
asks that the absorbing latent carry most of the probe projection; ours only asks for alignment,
and ``absorption_rate`` with a random direction instead of the property's gives the chance level
(isotropic, so it understates how often decoders align with the residual's few large directions).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..io import as_sae
from ..metrics import f1_from_counts
from .evaluation import codes_of
from .steering import random_direction


@torch.no_grad()
def firing_counts(sae, x: Tensor, y: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """(true positives, false positives) [d_sae] per latent: how often it fires on x [N, d_in]
    rows with / without the property y [N] bool."""
    sae = as_sae(sae)
    tp = torch.zeros(sae.d_sae)
    fp = torch.zeros(sae.d_sae)
    for xc, yc in zip(x.split(chunk), y.split(chunk)):
        code = sae.encode_entries(xc)                # latents are >= 0: entries = firings
        positive = yc.bool()[code.rows]
        tp += torch.bincount(code.indices[positive], minlength=sae.d_sae)
        fp += torch.bincount(code.indices[~positive], minlength=sae.d_sae)
    return tp, fp


@torch.no_grad()
def main_latents(sae, x: Tensor, y: Tensor, max_main: int = 3, min_gain: float = 0.03,
                 n_candidates: int = 20) -> tuple[Tensor, float]:
    """(latent indices [m], F1) for the property y [N] on x [N, d_in]: the single latent whose
    firing has the best F1, then greedily more (from the ``n_candidates`` best) while the F1 of
    "any of them fires" rises by ``min_gain`` or more."""
    y = y.bool()
    tp, fp = firing_counts(sae, x, y)
    f1 = f1_from_counts(tp, tp + fp, y.sum())
    cand = f1.topk(n_candidates).indices
    fires = torch.cat([codes_of(sae, c, cand) > 0 for c in x.split(8192)])  # [N, c]
    chosen = [0]
    best = float(f1[cand[0]])
    while len(chosen) < max_main:
        union = fires[:, chosen].any(1, keepdim=True) | fires
        f1_u = f1_from_counts((union & y[:, None]).sum(0), union.sum(0), y.sum())
        f1_u[chosen] = -1
        j = int(f1_u.argmax())
        if float(f1_u[j]) < best + min_gain:
            break
        chosen.append(j)
        best = float(f1_u[j])
    return cand[chosen], best


@torch.no_grad()
def decoder_cosines(sae, direction: Tensor) -> Tensor:
    """[d_sae] cosine of each decoder row W_dec[j] with ``direction`` [d_in]."""
    W = torch.nn.functional.normalize(as_sae(sae).W_dec.float(), dim=-1)
    return W @ torch.nn.functional.normalize(direction.float(), dim=0)


def _absorbing(fires: Tensor, main: Tensor, cos_to_probe: Tensor, tau: float) -> Tensor:
    """[n, d_sae] bool: on row i, latent j absorbs the parent (no main latent fires on i, j fires,
    j is not a main latent, and cos_to_probe[j] >= tau). ``fires`` [n, d_sae] bool."""
    aligned = cos_to_probe >= tau
    aligned[main] = False
    silent = ~fires[:, main].any(1)
    return fires & aligned & silent[:, None]


def absorption_rate(codes: Tensor, positive: Tensor, main: Tensor, cos_to_probe: Tensor,
                    tau: float = 0.2) -> float:
    """Fraction of the rows with the property (``positive`` [n] bool) on which no main latent
    fires (``main`` [m] indices into codes [n, d_sae]) while some *other* firing latent j has
    cos_to_probe[j] >= tau (a decoder aligned with the probe, same sign)."""
    positive = positive.bool()
    if not positive.any():
        raise ValueError("No rows with the property: the absorption rate is undefined.")
    return float(_absorbing(codes[positive] > 0, main, cos_to_probe, tau).any(1).float().mean())


@torch.no_grad()
def absorption_report(sae, x: Tensor, positive: Tensor, main: Tensor, direction: Tensor,
                      tau: float = 0.2, chunk: int = 8192, n_random: int = 16) -> dict:
    """On held-out x [N, d_in] with property ``positive`` [N]: the miss rate (main latents silent
    on the property), the absorption rate against the probe ``direction``, the same rate against
    ``n_random`` random directions (chance: their mean, and the largest, since one direction
    can happen to lie near a busy latent), and the absorbing latents with how often each absorbs."""
    sae = as_sae(sae)
    codes = torch.cat([sae.encode(c) for c in x[positive.bool()].split(chunk)])
    fires = codes > 0
    absorbing = _absorbing(fires, main, decoder_cosines(sae, direction), tau)   # [n, d_sae]
    # the chance level: random directions from a stream of their own (torch.randn with seed 0 is
    # a seed-0 SAE's initial decoder row 0, which training may not have moved far)
    chance = torch.tensor([
        float(_absorbing(fires, main, decoder_cosines(sae, random_direction(direction.shape[-1], seed=s)),
                         tau).any(1).float().mean()) for s in range(n_random)])
    who = absorbing.sum(0)
    return {"n": int(len(codes)), "miss_rate": float((~fires[:, main].any(1)).float().mean()),
            "absorption": float(absorbing.any(1).float().mean()),
            "absorption_random_direction": float(chance.mean()),
            "absorption_random_max": float(chance.max()),
            "absorbers": {int(j): int(who[j]) for j in who.argsort(descending=True)[:5]
                          if who[j] > 0}}


__all__ = ["firing_counts", "main_latents", "decoder_cosines", "absorption_rate",
           "absorption_report"]
