"""Evaluation metrics (the chapter's 'Evaluation: How Do You Know an SAE Is Good?').

Shapes: x, x_hat [N, d_in] (any leading dims are flattened); latents [N, d_sae];
decoder matrices [n_latents, d_in] with one feature direction per row.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _flat(t: Tensor) -> Tensor:
    return t.detach().reshape(-1, t.shape[-1]).float()


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained: Σ||x - x̂||² / Σ||x - mean(x)||²  (= 1 - R²).

    0 is a perfect reconstruction; 1 is no better than predicting the mean activation.
    """
    x, x_hat = _flat(x), _flat(x_hat)
    if x.shape != x_hat.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but x_hat has shape {tuple(x_hat.shape)}.")
    if x.shape[0] < 2:
        raise ValueError("fvu needs at least 2 rows to measure variance.")
    total = (x - x.mean(dim=0)).pow(2).sum()
    return float((x - x_hat).pow(2).sum() / total.clamp_min(1e-12))


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """R² = 1 - FVU."""
    return 1.0 - fvu(x, x_hat)


def l0(latents: Tensor) -> float:
    """Mean number of non-zero latents per input: E_x ||f(x)||₀."""
    return float((_flat(latents) != 0).sum(dim=-1).float().mean())


def feature_density(latents: Tensor) -> Tensor:
    """[d_sae] fraction of inputs on which each latent fires (its firing frequency)."""
    return (_flat(latents) != 0).float().mean(dim=0)


def dead_fraction(latents_or_density: Tensor) -> float:
    """Fraction of latents that never fire. Accepts latents [N, d_sae] or a density [d_sae]."""
    density = (latents_or_density if latents_or_density.ndim == 1
               else feature_density(latents_or_density))
    return float((density == 0).float().mean())


def relative_reconstruction_bias(x: Tensor, x_hat: Tensor, center: Tensor | None = None) -> float:
    """γ = E||x̂||² / E[x̂·x], the γ that minimises E||x̂/γ - x||² (Rajamanoharan et al. 2024a,
    Gated SAEs, sec. 5.1).

    γ < 1: reconstructions are systematically too short (shrinkage); γ = 1: no bias in their length.
    ``center`` [d_in] (e.g. the data mean) is subtracted from both first: in a residual stream a
    large shared offset makes every x̂ look unbiased, so measuring around the mean isolates the
    latents' part.
    """
    x, x_hat = _flat(x), _flat(x_hat)
    if x.shape != x_hat.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but x_hat has shape {tuple(x_hat.shape)}.")
    if center is not None:
        x, x_hat = x - center.float(), x_hat - center.float()
    return float(x_hat.pow(2).sum() / (x_hat * x).sum().clamp_min(1e-12))


def f1_from_counts(both: Tensor, n_a: Tensor, n_b: Tensor, empty: float = 0.0) -> Tensor:
    """F1 = 2·#(a and b) / (#a + #b), the harmonic mean of precision #(a and b)/#a and recall
    #(a and b)/#b, from counts (tensors of one shape, e.g. [d_sae]: one count per latent; or
    numbers); ``empty`` where #a + #b = 0. The one F1 behind absorption's main latents,
    autointerp's rules, feature splitting's overlaps and steering's concept latents."""
    both, n_a, n_b = (torch.as_tensor(t) for t in (both, n_a, n_b))
    dtype = both.dtype if both.is_floating_point() else torch.get_default_dtype()
    den = (n_a + n_b).to(dtype)
    f1 = 2 * both.to(dtype) / torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, f1, torch.full_like(f1, empty))


def cosine_matrix(W_a: Tensor, W_b: Tensor) -> Tensor:
    """[n_a, n_b] cosine similarity between the rows of W_a [n_a, d] and W_b [n_b, d]."""
    if W_a.shape[-1] != W_b.shape[-1]:
        raise ValueError("Directions must share a dimension: "
                         f"got {tuple(W_a.shape)} and {tuple(W_b.shape)}. "
                         "Pass decoder matrices as [n_latents, d_in] (sae.W_dec).")
    a = torch.nn.functional.normalize(W_a.detach().float(), dim=-1)
    b = torch.nn.functional.normalize(W_b.detach().float(), dim=-1)
    return a @ b.T


def nearest(W_a: Tensor, W_b: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """For each row of W_a [n_a, d]: (cosine [n_a], index [n_a]) of its nearest row of W_b [n_b, d].

    Chunked over W_a so memory stays at chunk x n_b, whatever n_a is."""
    best = [cosine_matrix(W_a[i:i + chunk], W_b).max(dim=1) for i in range(0, W_a.shape[0], chunk)]
    return torch.cat([b.values for b in best]), torch.cat([b.indices for b in best])


def max_cosines(W_a: Tensor, W_b: Tensor, chunk: int = 4096) -> Tensor:
    """[n_a] for each row of W_a, the largest cosine to any row of W_b."""
    return nearest(W_a, W_b, chunk)[0]


def mmcs(W_a: Tensor, W_b: Tensor) -> float:
    """Mean max cosine similarity: mean over a's rows of the max cosine to b's rows.

    Not symmetric: mmcs(true_dictionary, sae.W_dec) asks "is every true feature found?",
    mmcs(sae_seed0.W_dec, sae_seed1.W_dec) asks "does seed 0's dictionary reappear in seed 1?".
    """
    return float(max_cosines(W_a, W_b).mean())


# --- recovery of a known dictionary (synthetic data, sae_minimal.synthetic) -----------------------
def recovery(sae, true_dictionary: Tensor, threshold: float = 0.9) -> dict[str, float]:
    """How well the SAE's decoder rows recover the true features.

    Returns {"mmcs": mean over true features of the best cosine to any SAE latent,
             "frac_recovered": fraction of true features with best cosine > ``threshold``}.
    """
    best = max_cosines(true_dictionary, sae.W_dec)
    return {"mmcs": float(best.mean()), "frac_recovered": float((best > threshold).float().mean())}


@torch.no_grad()
def magnitude_ratio(sae, data, threshold: float = 0.9, max_rows: int = 20_000) -> Tensor:
    """Shrinkage per recovered feature: E[latent · cos] / E[true coefficient] where both fire.

    Each true feature is matched to the latent with the most similar decoder row
    (cos > ``threshold``); on inputs where the feature is present and the latent fires, the ratio
    compares the latent's contribution along the true direction with the true magnitude (gating
    errors are not counted).
    ``data`` is a ``sae_minimal.synthetic.SyntheticData`` (its dictionary, activations and codes).
    Returns [n_recovered]; values < 1 mean the SAE under-estimates magnitudes (L1 shrinkage).
    """
    best_cos, best = nearest(data.dictionary, sae.W_dec)      # [n_features] each
    x, codes = data.activations[:max_rows], data.codes[:max_rows]
    latents = sae.encode(x.to(sae.W_dec.device)).float().cpu()
    norms = sae.W_dec.detach().float().norm(dim=-1).cpu()
    ratios = []
    for j in (best_cos > threshold).nonzero().squeeze(-1).tolist():
        on = (codes[:, j] > 0) & (latents[:, best[j]] > 0)
        if on.sum() == 0:
            continue
        est = latents[on, best[j]] * norms[best[j]] * best_cos[j]
        ratios.append(est.mean() / codes[on, j].mean())
    return torch.stack(ratios) if ratios else torch.empty(0)
