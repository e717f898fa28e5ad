"""Toy models of superposition (Elhage et al. 2022), many instances trained at once.

The model compresses n sparse features into m < n dimensions and reads them back:

    h  = W x                 W [m, n]   (column W_i is feature i's direction in the hidden space)
    x' = ReLU(Wᵀ h + b)      b [n]
    L  = E_x Σ_i I_i (x_i - x'_i)²        I_i: importance of feature i

Each feature is 0 with probability S (the sparsity) and U[0, 1] otherwise. Every tensor carries a
leading *instance* dimension, so a whole sweep over (S, importance) is one batched training run --
the trick the original work used to map phase diagrams in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..train import train_concurrently


@dataclass
class ToyModel:
    """W [I, m, n], b [I, n], feature_probability [I, n] (= 1 - S), importance [I, n]."""

    W: Tensor
    b: Tensor
    feature_probability: Tensor
    importance: Tensor


def toy_forward(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """x' = ReLU(Wᵀ W x + b) for W [I, m, n], b [I, n], x [I, B, n]."""
    h = torch.einsum("imn,ibn->ibm", W, x)
    return torch.relu(torch.einsum("imn,ibm->ibn", W, h) + b[:, None, :])


def toy_loss(W: Tensor, b: Tensor, x: Tensor, importance: Tensor) -> Tensor:
    """[I] importance-weighted squared error, summed over features, averaged over the batch."""
    err = (x - toy_forward(W, b, x)).pow(2) * importance[:, None, :]
    return err.sum(-1).mean(-1)


def _toy_loss_batch_last(W: Tensor, b: Tensor, xT: Tensor, importance: Tensor) -> Tensor:
    """``toy_loss`` for xT [I, n, B] = x.transpose(1, 2): the same formula, batch last.

    Why: with n = 2 or 3 features innermost, every elementwise op (and its gradient) runs over
    rows of 2-3 numbers; with the batch innermost it runs over rows of B, and both products are
    plain bmm. Training 01's 2-feature phase diagram is ~3x faster on a CPU (equal to
    ``toy_loss`` up to float rounding: tests/test_toy_capacity.py).
    """
    h = torch.bmm(W, xT)                                                  # [I, m, B]
    x_hat = torch.relu(torch.bmm(W.transpose(1, 2), h) + b[:, :, None])   # [I, n, B]
    return ((xT - x_hat).pow(2) * importance[:, :, None]).sum(1).mean(-1)


def sample_features(feature_probability: Tensor, batch: int,
                    generator: torch.Generator | None = None) -> Tensor:
    """[I, batch, n]: each feature U[0,1] with probability p, else 0."""
    I, n = feature_probability.shape
    u = torch.rand(I, batch, n, generator=generator)
    p = feature_probability[:, None, :]
    # one draw does both jobs: P(u < p) = p, and given u < p, u / p is again U[0, 1]
    return torch.where(u < p, u / p, 0.0)


def _sample_batch_last(feature_probability: Tensor, batch: int,
                       generator: torch.Generator | None = None) -> Tensor:
    """``sample_features(...).transpose(1, 2)``, contiguous: [I, n, batch], the same numbers."""
    I, n = feature_probability.shape
    u = torch.rand(I, batch, n, generator=generator).transpose(1, 2).contiguous()
    p = feature_probability[:, :, None]
    return torch.where(u < p, u / p, 0.0)


def train_toy(n_features: int, n_hidden: int, feature_probability: Tensor,
              importance: Tensor | None = None, *, steps: int = 5000, batch: int = 1024,
              lr: float = 1e-3, seed: int = 0, restarts: int = 1,
              progress: bool = True) -> ToyModel:
    """Train I toy models at once (I = feature_probability.shape[0]).

    Args:
        feature_probability: [I] or [I, n], 1 - S per instance (and per feature).
        importance:          [n] or [I, n]; default all ones.
        restarts:            train this many differently-seeded copies of every instance and
                             keep, per instance, the one with the lowest expected loss: the small
                             models have local minima (e.g. two features sharing a direction with
                             the *same* sign). They train side by side
                             (``train.train_concurrently``: 1.3x sooner on 2 cores, same result).
    Adam with a cosine-decayed learning rate, as in the original colab; Xavier-normal init.
    """
    gen = torch.Generator().manual_seed(seed)
    p = feature_probability.float()
    p = p[:, None].expand(-1, n_features).clone() if p.ndim == 1 else p.clone()
    I = p.shape[0]
    imp = torch.ones(n_features) if importance is None else importance.float()
    imp = imp.expand(I, n_features).clone() if imp.ndim == 1 else imp.clone()
    if restarts > 1:    # independent runs, each with its own generator: side by side on a CPU
        runs = train_concurrently(
            [lambda r=r: train_toy(n_features, n_hidden, p, imp, steps=steps, batch=batch, lr=lr,
                                   seed=seed + 1000 * r, progress=False) for r in range(restarts)],
            desc=f"training {restarts} x {I} toy models" if progress else None)
        best = torch.stack([expected_loss(run, 40_000) for run in runs]).argmin(0)   # [I]
        pick = torch.arange(I)
        return ToyModel(torch.stack([run.W for run in runs])[best, pick],
                        torch.stack([run.b for run in runs])[best, pick], p, imp)
    W = (torch.randn(I, n_hidden, n_features, generator=gen)
         * (2.0 / (n_hidden + n_features)) ** 0.5).requires_grad_()
    b = torch.zeros(I, n_features, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in tqdm(range(steps), disable=not progress, desc=f"training {I} toy models",
                  mininterval=1.0):
        xT = _sample_batch_last(p, batch, gen)   # [I, n, batch]: toy_loss, ~3x faster
        # instances are independent: summing trains each on its own
        loss = _toy_loss_batch_last(W, b, xT, imp).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return ToyModel(W.detach(), b.detach(), p, imp)


@torch.no_grad()
def expected_loss(model: ToyModel, n_samples: int = 200_000, seed: int = 1) -> Tensor:
    """[I] Monte-Carlo estimate of each instance's expected loss (common random numbers across
    calls)."""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(model.W.shape[0])
    chunk = 20_000
    for _ in range(n_samples // chunk):
        xT = _sample_batch_last(model.feature_probability, chunk, gen)
        total += _toy_loss_batch_last(model.W, model.b, xT, model.importance)
    return total / (n_samples // chunk)


def feature_norms(W: Tensor) -> Tensor:
    """[..., n] ||W_i||: how strongly each feature is represented (≈1 represented, ≈0 dropped)."""
    return W.norm(dim=-2)


def superposition(W: Tensor) -> Tensor:
    """[..., n] Σ_{j≠i} (Ŵ_i · W_j)²: how much other features interfere with feature i
    (Elhage et al.)."""
    Wn = W / W.norm(dim=-2, keepdim=True).clamp_min(1e-6)
    G = torch.einsum("...mi,...mj->...ij", Wn, W).pow(2)
    return G.sum(-1) - torch.diagonal(G, dim1=-2, dim2=-1)


def feature_dimensionality(W: Tensor) -> Tensor:
    """[..., n] D_i = ||W_i||² / Σ_j (Ŵ_i · W_j)²: the fraction of a dimension feature i gets.

    1 for a dedicated dimension, 1/2 for an antipodal pair, 2/3 for a triangle in 2 dimensions,
    2/5 for a pentagon, ~0 for a feature that is not represented.
    """
    Wn = W / W.norm(dim=-2, keepdim=True).clamp_min(1e-6)
    denom = torch.einsum("...mi,...mj->...ij", Wn, W).pow(2).sum(-1)
    return W.norm(dim=-2).pow(2) / denom.clamp_min(1e-12)


def dimensions_per_feature(W: Tensor) -> Tensor:
    """[...] m / ||W||_F²: hidden dimensions used per feature (1/2 when features pair up
    antipodally)."""
    m = W.shape[-2]
    return m / W.pow(2).sum(dim=(-2, -1))


REGIMES = ("not represented", "dedicated dimension", "superposition")


def classify_last_feature(W: Tensor, threshold: float = 0.5, interference: float = 0.1) -> Tensor:
    """[I] regime of the last feature for W [I, m, n] (0 not represented, 1 dedicated,
    2 superposition).

    Not represented: ||W_last|| < threshold. Superposition: some other represented feature has a
    squared projection onto W_last above ``interference``. Otherwise it has a dimension to itself.
    """
    norms = feature_norms(W)
    last = W[..., -1:]
    proj = (torch.einsum("imn,imk->in", W[..., :-1],
                         last / last.norm(dim=-2, keepdim=True).clamp_min(1e-6))
            .pow(2))
    shares = ((proj > interference) & (norms[:, :-1] > threshold)).any(-1)
    regime = torch.where(shares, 2, 1)
    return torch.where(norms[:, -1] < threshold, 0, regime)
