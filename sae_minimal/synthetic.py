"""Synthetic activations with a known dictionary: the one setting where we can check that an SAE
found the *true* features, not merely a good reconstruction.

    x = Σ_j c_j · d_j + noise,   d_j unit vectors in R^d_in,   c_j >= 0 sparse

Each feature j fires with probability p_j (uniform, or a power law as in real models: a few common
features and a long tail of rare ones) and, when it fires, has a positive magnitude. Optional
structure: correlated firing (groups share a Gaussian copula) and hierarchy (a child fires only when
its parent does, at most one child at a time) -- the setting in which feature absorption appears.
With n_features > d_in the dictionary is overcomplete: the features are in superposition.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor



@dataclass
class SyntheticData:
    """activations [N, d_in]; dictionary [n_features, d_in] (unit rows); codes [N, n_features];
    firing_probs [n_features]; parent [n_features] (index of the parent feature, -1 for none)."""

    activations: Tensor
    dictionary: Tensor
    codes: Tensor
    firing_probs: Tensor
    parent: Tensor


def _firing_probs(n: int, p: float, firing: str, alpha: float) -> Tensor:
    if firing == "uniform":
        return torch.full((n,), p)
    if firing == "power_law":
        w = torch.arange(1, n + 1, dtype=torch.float64).pow(-alpha)
        return (w * (p * n / w.sum())).clamp(max=1.0).float()
    raise ValueError(f"firing must be 'uniform' or 'power_law', got {firing!r}.")


def _magnitudes(shape: tuple[int, ...], kind: str, gen: torch.Generator) -> Tensor:
    if kind == "constant":
        return torch.ones(shape)
    if kind == "uniform":  # U[0.5, 1.5]: mean 1, bounded away from 0
        return 0.5 + torch.rand(shape, generator=gen)
    if kind == "exponential":
        return torch.empty(shape).exponential_(1.0, generator=gen)
    raise ValueError(f"magnitude must be 'constant', 'uniform' or 'exponential', got {kind!r}.")


def data_generator(seed: int) -> torch.Generator:
    """The synthetic data's own random stream for ``seed``.

    Seeded from a hash of ("sae_minimal.synthetic", seed), not from ``seed`` itself: an SAE draws
    its initial decoder from ``torch.Generator().manual_seed(seed)``, and were the data drawn from
    the same stream, an *untrained* SAE with the same seed would start on the true dictionary
    (d_sae >= n_features, equal d_in) and every recovery score would be true before training."""
    digest = hashlib.sha256(f"sae_minimal.synthetic:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def make_synthetic(d_in: int = 64, n_features: int = 128, n_samples: int = 50_000, *,
                   p: float = 0.03, firing: str = "uniform", power_law_alpha: float = 0.5,
                   magnitude: str = "uniform", correlation: float = 0.0, correlation_group: int = 4,
                   n_parents: int = 0, children_per_parent: int = 3, child_prob: float = 0.5,
                   noise: float = 0.0, orthogonal: bool = False, seed: int = 0) -> SyntheticData:
    """Sample ``n_samples`` activations that are sparse combinations of ``n_features`` true
    features.

    Args:
        p:              mean firing probability of a feature (1 - S in Elhage et al.'s notation).
        firing:         "uniform" (every feature p) or "power_law" (p_j ∝ j^-alpha, mean p).
        magnitude:      distribution of active coefficients: "uniform" U[0.5,1.5], "exponential",
                        "constant".
        correlation:    ρ in [0, 1): features in consecutive groups of ``correlation_group`` fire
                        together more often (Gaussian copula with pairwise correlation ρ; marginals
                        stay p_j).
        n_parents:      the first n_parents * (1 + children_per_parent) features form hierarchies:
                        each parent is followed by its children; a child fires only with its
                        parent, with probability ``child_prob``, and at most one child fires at a
                        time.
        noise:          std of isotropic Gaussian noise added to x.
        orthogonal:     orthonormal dictionary (needs n_features <= d_in); otherwise random unit
                        vectors.
    """
    if min(d_in, n_features, n_samples) < 1:
        raise ValueError("d_in, n_features and n_samples must be >= 1, "
                         f"got {d_in}, {n_features}, {n_samples}.")
    if not 0 < p <= 1:
        raise ValueError(f"p is a firing probability and must be in (0, 1], got {p}.")
    if not 0 <= correlation < 1:
        raise ValueError(f"correlation must be in [0, 1), got {correlation}.")
    n_tree = n_parents * (1 + children_per_parent)
    if n_tree > n_features:
        raise ValueError(f"{n_parents} parents with {children_per_parent} children need "
                         f"{n_tree} features, but n_features={n_features}.")
    gen = data_generator(seed)

    if orthogonal:
        if n_features > d_in:
            raise ValueError("An orthogonal dictionary needs n_features <= d_in, "
                             f"got {n_features} > {d_in}.")
        q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen))
        dictionary = q.T[:n_features].contiguous()
    else:
        dictionary = torch.randn(n_features, d_in, generator=gen)
        dictionary /= dictionary.norm(dim=-1, keepdim=True)

    probs = _firing_probs(n_features, p, firing, power_law_alpha)
    parent = torch.full((n_features,), -1, dtype=torch.long)
    for t in range(n_parents):
        root = t * (1 + children_per_parent)
        parent[root + 1: root + 1 + children_per_parent] = root

    # Gaussian copula: z_j = sqrt(ρ)·g_group + sqrt(1-ρ)·e_j, fire where z_j < Φ⁻¹(p_j).
    normal = torch.distributions.Normal(0.0, 1.0)
    cutoff = normal.icdf(probs.clamp(1e-7, 1 - 1e-7))
    n_groups = -(-n_features // correlation_group)
    shared = torch.randn(n_samples, n_groups, generator=gen).repeat_interleave(
        correlation_group, dim=1)
    z = correlation ** 0.5 * shared[:, :n_features] + (1 - correlation) ** 0.5 * torch.randn(
        n_samples, n_features, generator=gen)
    active = z < cutoff
    del z, shared

    if n_parents:
        is_child = parent >= 0
        active[:, is_child] = False
        for t in range(n_parents):
            root = t * (1 + children_per_parent)
            on = active[:, root] & (torch.rand(n_samples, generator=gen) < child_prob)
            pick = torch.randint(children_per_parent, (n_samples,), generator=gen) + root + 1
            rows = on.nonzero().squeeze(-1)
            active[rows, pick[rows]] = True
        probs = active.float().mean(dim=0)  # report the realised marginals

    codes = active * _magnitudes((n_samples, n_features), magnitude, gen)
    x = codes @ dictionary
    if noise > 0:
        x += noise * torch.randn(x.shape, generator=gen)
    return SyntheticData(activations=x, dictionary=dictionary, codes=codes, firing_probs=probs,
                         parent=parent)
