"""Scaling laws for SAEs: power-law fits with an irreducible term, Gao et al.'s joint L(N, k),
bootstrap uncertainty, and the count of *useful* latents (notebook 07).

    from sae_minimal import scaling
    c, alpha = scaling.fit_power_law(N, L, L_inf=0.02)     # L ≈ c·N^(-alpha) + L_inf, L_inf known
    fit = scaling.fit_saturating_power_law(N, L)            # L_inf fitted too
    fit.predict(16384)
    joint = scaling.fit_joint_nk(N, k, L)                   # Gao et al. 2024, eq. 4
    scaling.useful_latents(sae.W_dec, density)              # alive and not a near-duplicate

The laws (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", sec. 3.1):

    L(N)    = c · N^(-α) + L_∞                                           (reducible + irreducible)
    L(N, k) = exp(α + β_k ln k + β_N ln N + γ ln k ln N) + exp(ζ + η ln k)

L is the normalised MSE (our FVU), N the number of latents, k the latents active per token. The
second term of each is the loss no width removes: at fixed k, the reconstruction error a TopK code
with k terms cannot go below. In the joint law the local exponent in N at a given k is
-(β_N + γ ln k): larger k, steeper in N.

Every fit is least squares on **log L** (relative errors): the points span an order of magnitude or
more, and least squares on L itself would let the largest losses (smallest N) decide the exponent.
Pure tensor code, no scipy: the saturating fit profiles L_∞ over a grid (for each L_∞, the (c, α)
that minimise the error in ln L, by Levenberg-Marquardt from the straight-line fit through
ln(L - L_∞)), then over a finer grid around the best point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Gao et al. 2024, eq. 4 (GPT-4 residual stream, TopK, trained to convergence; natural logs):
# the fitted joint law, quoted so that notebook 07 can set our exponents next to theirs. beta_k,
# beta_N and gamma as quoted in a review of the ICLR 2025 version (0.26, -0.017, -0.042); alpha,
# zeta and eta as read when this was written and not re-checked offline: compare with
# arXiv:2406.04093, sec. 3.1, before relying on them.
GAO_JOINT = {"alpha": -0.50, "beta_k": 0.26, "beta_N": -0.017, "gamma": -0.042,
             "zeta": -1.32, "eta": -0.085}


def _as_1d(name: str, values) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if t.dim() != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per SAE), got shape "
                         f"{tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf values: drop the failed runs before fitting.")
    return t


def _points(N, L, min_points: int = 2) -> tuple[Tensor, Tensor]:
    N, L = _as_1d("N", N), _as_1d("L", L)
    if N.shape != L.shape:
        raise ValueError(f"N and L must have one value per SAE each: got {len(N)} widths and "
                         f"{len(L)} losses.")
    if len(N) < min_points:
        raise ValueError(f"a fit needs at least {min_points} points, got {len(N)}.")
    if (N <= 0).any() or (L <= 0).any():
        raise ValueError("N and L must be positive (a power law lives on log axes); got "
                         f"min N {float(N.min()):g}, min L {float(L.min()):g}.")
    if len(torch.unique(N)) < 2:
        raise ValueError("all points have the same N: a slope needs at least two widths.")
    return N, L


def power_law(N, c: float, alpha: float, L_inf: float = 0.0) -> Tensor:
    """c·N^(-alpha) + L_inf, elementwise (N: any shape)."""
    return c * torch.as_tensor(N, dtype=torch.float64) ** (-alpha) + L_inf


def fit_power_law(N, L, L_inf: float = 0.0) -> tuple[float, float]:
    """(c, alpha) of L ≈ c·N^(-alpha) + L_inf for a *known* irreducible loss L_inf.

    N [n] and L [n]: widths and losses. The reducible part L - L_inf is a straight line in log-log
    space, ln(L - L_inf) = ln c - alpha·ln N, fitted by ordinary least squares. alpha > 0 means the
    loss falls with N."""
    N, L = _points(N, L)
    if not math.isfinite(L_inf) or L_inf < 0:
        raise ValueError(f"L_inf must be a finite number >= 0, got {L_inf!r}.")
    if L_inf >= float(L.min()):
        raise ValueError(f"L_inf = {L_inf:g} is not below every loss (min L = {float(L.min()):g}): "
                         "the reducible part L - L_inf must be positive to take its log.")
    x, y = N.log(), (L - L_inf).log()
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    intercept = float(y.mean()) - slope * float(x.mean())
    return math.exp(intercept), -slope


@dataclass(frozen=True)
class PowerLawFit:
    """L(N) = c·N^(-alpha) + L_inf, with the fit's rms error in ln L."""

    c: float
    alpha: float
    L_inf: float
    rms_log_error: float

    def predict(self, N) -> Tensor:
        return power_law(N, self.c, self.alpha, self.L_inf)


def _profile(x: Tensor, y: Tensor, L_inf: Tensor, iters: int = 30) -> tuple[Tensor, Tensor, Tensor]:
    """For each candidate floor L_inf [G], the (ln c, alpha) [G] that minimise the squared error in
    ln L, and that error's rms [G]. x = ln N [n], y = ln L [n].

    The model is ln L = ln(exp(ln c - alpha·x) + L_inf). A straight line through ln(L - L_inf)
    (``fit_power_law``) is only the start: it weights each point by L / (L - L_inf), so near the
    floor the widest SAEs would decide the exponent. Levenberg-Marquardt then minimises the error in
    ln L itself, all candidates at once; a step is kept only where it lowers the error."""
    xc = x - x.mean()
    Y = (y.exp() - L_inf[:, None]).log()                           # [G, n]
    slope = (Y - Y.mean(1, keepdim=True)) @ xc / (xc @ xc)
    theta = torch.stack([Y.mean(1) - slope * x.mean(), -slope], 1)  # [G, 2]: ln c, alpha

    def residuals(theta):
        m = (theta[:, :1] - theta[:, 1:] * x).exp()                 # c·N^(-alpha), [G, n]
        return (m + L_inf[:, None]).log() - y, m / (m + L_inf[:, None])

    r, w = residuals(theta)
    cost, damping = r.pow(2).sum(1), torch.full_like(L_inf, 1e-3)
    for _ in range(iters):
        J = torch.stack([w, -x * w], 2)                             # d r / d(ln c, alpha), [G, n, 2]
        JtJ = J.transpose(1, 2) @ J
        step = torch.linalg.solve(JtJ + damping[:, None, None] * torch.diag_embed(
            JtJ.diagonal(dim1=1, dim2=2) + 1e-12), -(J.transpose(1, 2) @ r[..., None]))[..., 0]
        r_new, w_new = residuals(theta + step)
        cost_new = r_new.pow(2).sum(1)
        better = cost_new < cost                                    # NaN compares False: rejected
        theta = torch.where(better[:, None], theta + step, theta)
        r, w = torch.where(better[:, None], r_new, r), torch.where(better[:, None], w_new, w)
        cost = torch.where(better, cost_new, cost)
        damping = torch.where(better, damping / 3, damping * 4)
    return theta[:, 0], theta[:, 1], (cost / len(x)).sqrt()


def fit_saturating_power_law(N, L, *, grid: int = 100) -> PowerLawFit:
    """Fit L ≈ c·N^(-alpha) + L_inf with L_inf >= 0 unknown: least squares on ln L over all three.

    N [n], L [n] with n >= 3 (three parameters). The floor is profiled: for each L_inf on a grid over
    [0, min L) the best (c, alpha) for the error in ln L (``_profile``), then a second grid between
    the best point's neighbours. Few points that barely bend leave L_inf poorly determined:
    bootstrap it (``bootstrap_fits``) before trusting it."""
    N, L = _points(N, L, min_points=3)
    x, y = N.log(), L.log()
    top = float(L.min()) * (1 - 1e-6)
    candidates, fit = torch.linspace(0, top, grid, dtype=torch.float64), None
    for _ in range(2):   # the grid, then a finer one between the best point's neighbours
        log_c, alpha, err = _profile(x, y, candidates)
        best = int(torch.nan_to_num(err, nan=math.inf).argmin())
        if fit is None or float(err[best]) < fit.rms_log_error:
            fit = PowerLawFit(math.exp(float(log_c[best])), float(alpha[best]),
                              float(candidates[best]), float(err[best]))
        lo, hi = candidates[max(best - 1, 0)], candidates[min(best + 1, grid - 1)]
        candidates = torch.linspace(float(lo), float(hi), grid, dtype=torch.float64)
    return fit


# --- Gao et al.'s joint law in (N, k) -------------------------------------------------------------
JOINT_KEYS = ("alpha", "beta_k", "beta_N", "gamma", "zeta", "eta")


def joint_nk_law(N, k, p: dict[str, float]) -> Tensor:
    """Gao et al. 2024 eq. 4: exp(α + β_k ln k + β_N ln N + γ ln k ln N) + exp(ζ + η ln k)."""
    lN = torch.as_tensor(N, dtype=torch.float64).log()
    lk = torch.as_tensor(k, dtype=torch.float64).log()
    return (torch.exp(p["alpha"] + p["beta_k"] * lk + p["beta_N"] * lN + p["gamma"] * lk * lN)
            + torch.exp(p["zeta"] + p["eta"] * lk))


def local_exponent_N(p: dict[str, float], k: float) -> float:
    """The joint law's exponent of the reducible part in N at fixed k: -(β_N + γ ln k)."""
    return -(p["beta_N"] + p["gamma"] * math.log(k))


def fit_joint_nk(N, k, L, *, restarts: int = 32, steps: int = 300, seed: int = 0,
                 fixed: dict[str, float] | None = None) -> dict:
    """Fit Gao et al.'s L(N, k) (``joint_nk_law``) to SAEs at several widths N [n] and k [n].

    Six parameters: needs at least 7 points spanning at least two values of N and of k. Least
    squares on ln L by L-BFGS from several random starts around Gao et al.'s values; returns the
    best start's parameters and "rms_log_error", and under "optima" every start's end point
    (parameters and rms_log_error, best first). Where those differ in their parameters at
    nearly the same error, the data do not identify the law (on a narrow range of N the
    irreducible term trades off against the reducible one): read the exponents, not ζ and η.
    ``fixed`` {key: value}: parameters held at those values (``profile_joint_nk``)."""
    N, L = _points(N, L, min_points=7)
    k = _as_1d("k", k)
    if k.shape != N.shape:
        raise ValueError(f"k must have one value per SAE: got {len(k)} for {len(N)} widths.")
    if (k <= 0).any() or len(torch.unique(k)) < 2:
        raise ValueError("k must be positive and take at least two values (else use "
                         "fit_saturating_power_law at fixed k).")
    fixed = fixed or {}
    unknown = sorted(set(fixed) - set(JOINT_KEYS))
    if unknown:
        raise ValueError(f"fixed names unknown parameters {unknown}; choose from {JOINT_KEYS}.")
    held = torch.tensor([key in fixed for key in JOINT_KEYS])
    gen = torch.Generator().manual_seed(seed)
    target = L.log()
    optima = []
    for r in range(restarts):
        start = torch.tensor([GAO_JOINT[key] for key in JOINT_KEYS], dtype=torch.float64)
        if r:
            start = start + 0.3 * torch.randn(6, generator=gen, dtype=torch.float64)
        start[4] = math.log(0.5 * float(L.min())) if r % 2 == 0 else start[4]
        start[held] = torch.tensor([float(fixed[key]) for key in JOINT_KEYS if key in fixed],
                                   dtype=torch.float64)
        theta = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([theta], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            pred = joint_nk_law(N, k, dict(zip(JOINT_KEYS, theta)))
            loss = (pred.log() - target).pow(2).mean()
            loss.backward()
            theta.grad[held] = 0.0    # no gradient, no L-BFGS step: held parameters stay put
            return loss

        try:
            opt.step(closure)
        except RuntimeError:   # a start that overflows exp: try the next one
            continue
        with torch.no_grad():
            err = float((joint_nk_law(N, k, dict(zip(JOINT_KEYS, theta))).log() - target)
                        .pow(2).mean().sqrt())
        if not math.isfinite(err):
            continue
        optima.append({**{key: float(v) for key, v in zip(JOINT_KEYS, theta.detach())},
                       "rms_log_error": err})
    if not optima:
        raise RuntimeError("every start of the joint fit diverged: check that L holds losses "
                           "(FVU in (0, 1]), not log-losses or percentages.")
    optima.sort(key=lambda o: o["rms_log_error"])   # stable: the first start wins a tie
    return {**optima[0], "optima": optima}


def profile_joint_nk(N, k, L, key: str, values, **fit_kw) -> list[dict]:
    """The joint fit redone with ``key`` held at each of ``values`` (the others fitted): the best
    rms_log_error the law reaches along that one parameter, a profile. Where the error barely
    changes across the values, the data do not pin the parameter down, whatever the unconstrained
    fit's value of it."""
    return [fit_joint_nk(N, k, L, fixed={key: float(v)}, **fit_kw) for v in values]


# --- uncertainty ----------------------------------------------------------------------------------
def bootstrap_fvu(sq_err: Tensor, sq_dev: Tensor, *, block: int = 127, n_boot: int = 200,
                  seed: int = 0) -> Tensor:
    """[n_boot, n_saes] FVU of every SAE on resampled held-out data.

    sq_err [n_saes, rows]: ||x - x̂||² per held-out row and SAE; sq_dev [rows]: ||x - mean||². Rows
    are resampled in contiguous blocks (default 127: one text window), because neighbouring tokens
    are correlated; each replicate uses the *same* blocks for every SAE, so differences between
    SAEs keep their pairing. Captures evaluation noise, not seed-to-seed training noise."""
    if sq_err.dim() != 2 or sq_dev.dim() != 1 or sq_err.shape[1] != sq_dev.shape[0]:
        raise ValueError(f"expected sq_err [n_saes, rows] and sq_dev [rows], got "
                         f"{tuple(sq_err.shape)} and {tuple(sq_dev.shape)}.")
    n_blocks = sq_dev.shape[0] // block
    if n_blocks < 2:
        raise ValueError(f"{sq_dev.shape[0]} rows make fewer than 2 blocks of {block}: pass more "
                         "held-out rows or a smaller block.")
    used = n_blocks * block
    err = sq_err[:, :used].double().reshape(len(sq_err), n_blocks, block).sum(-1)  # [S, B]
    dev = sq_dev[:used].double().reshape(n_blocks, block).sum(-1)                   # [B]
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(n_blocks, (n_boot, n_blocks), generator=gen)             # [R, B]
    return (err[:, picks].sum(-1) / dev[picks].sum(-1)).T                           # [R, S]


def bootstrap_fits(N, L_boot: Tensor, *, saturating: bool = True) -> dict[str, Tensor]:
    """Refit the power law to every bootstrap replicate L_boot [n_boot, n]: {"alpha", "c",
    "L_inf"} each [n_boot]. Report e.g. the 5th-95th percentiles of alpha."""
    fits = []
    for row in L_boot:
        if saturating:
            f = fit_saturating_power_law(N, row)
            fits.append((f.alpha, f.c, f.L_inf))
        else:
            c, alpha = fit_power_law(N, row)
            fits.append((alpha, c, 0.0))
    out = torch.tensor(fits, dtype=torch.float64)
    return {"alpha": out[:, 0], "c": out[:, 1], "L_inf": out[:, 2]}


# --- useful latents -------------------------------------------------------------------------------
def useful_latents(W_dec: Tensor, density: Tensor, *, threshold: float = 0.9,
                   min_density: float = 0.0) -> int:
    """How many latents are alive (firing frequency > min_density) and distinct: scanning alive
    latents from most to least frequent, keep one unless its decoder direction has cosine above
    ``threshold`` with a latent already kept (a near-duplicate adds no new direction).

    W_dec [d_sae, d_in] (rows are the directions), density [d_sae] (``lab.density``)."""
    if W_dec.dim() != 2 or density.shape != (W_dec.shape[0],):
        raise ValueError(f"expected W_dec [d_sae, d_in] and density [d_sae], got "
                         f"{tuple(W_dec.shape)} and {tuple(density.shape)}. Pass sae.W_dec "
                         "(rows are latents).")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a cosine in (0, 1], got {threshold!r}.")
    alive = (density > min_density).nonzero().squeeze(1)
    order = alive[density[alive].argsort(descending=True)]
    D = torch.nn.functional.normalize(W_dec.detach().float()[order], dim=-1)
    duplicate = torch.zeros(len(order), dtype=torch.bool)
    cos = D @ D.T                                      # [alive, alive]
    cos.fill_diagonal_(0)
    for i in range(len(order)):                        # greedy: earlier (commoner) latents win
        if not duplicate[i]:
            duplicate |= (cos[i] > threshold) & (torch.arange(len(order)) > i)
    return int((~duplicate).sum())


# --- compute --------------------------------------------------------------------------------------
def tokens_to_reach(tokens, fvu, target: float, *, window: int = 5) -> float | None:
    """The first number of training tokens at which a training curve's FVU, smoothed by a running
    median over ``window`` logged points (training-batch FVU is noisy), is at or below ``target``;
    None if it never gets there."""
    t, f = _as_1d("tokens", tokens), _as_1d("fvu", fvu)
    if t.shape != f.shape:
        raise ValueError(f"tokens and fvu must match: {len(t)} vs {len(f)} points.")
    for i in range(len(f)):
        lo = max(0, i - window // 2)
        hi = min(len(f), lo + window)
        if float(f[lo:hi].median()) <= target:
            return float(t[i])
    return None


__all__ = ["GAO_JOINT", "PowerLawFit", "power_law", "fit_power_law", "fit_saturating_power_law",
           "joint_nk_law", "local_exponent_N", "fit_joint_nk", "profile_joint_nk", "bootstrap_fvu",
           "bootstrap_fits", "useful_latents", "tokens_to_reach"]
