"""How many nearly-orthogonal directions fit in R^d? Bounds for the chapter's capacity argument.

A set of N unit vectors u_1..u_N in R^d with max_{i≠j} |<u_i, u_j>| <= ε ("ε-orthogonal") is the
geometric object superposition needs: N features, d neurons, interference at most ε.

Upper bounds (no packing can beat them):
  * first Welch bound (Welch 1974, k = 1):  N <= d(1 - ε²) / (1 - dε²),   only when dε² < 1;
  * k-th Welch bound:  max|<u_i,u_j>|^{2k} >= (N / C(d+k-1, k) - 1) / (N - 1), which for a
    target ε gives
        N <= C·(1 - ε^{2k}) / (1 - C·ε^{2k}),  C = C(d+k-1, k),   only when C·ε^{2k} < 1;
  * Kabatyanskii-Levenshtein (1978):
        log2 N <= d · [ (1+s)/(2s) log2((1+s)/(2s)) - (1-s)/(2s) log2((1-s)/(2s)) ]
        with s = sin θ, cos θ = ε -- the leading term of an asymptotic bound (o(d) terms dropped),
        so read it as a growth *rate*. At small ε the rate -> 0 and the leading term alone drops
        below d (which N always reaches with orthogonal vectors): there the Welch bounds are the
        ones to use.

Lower estimate (a packing that exists):
  * random unit vectors: P(|<u,v>| > ε) <= 2·exp(-dε²/2), so a union bound over N²/2 pairs shows
    N = exp(dε²/4) random vectors are ε-orthogonal with positive probability
    (Johnson-Lindenstrauss style).

All bounds are returned as floats (math.inf where a bound says nothing); log versions avoid
overflow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def welch_bound(d: int, eps: float) -> float:
    """Largest N allowed by the first Welch bound, floor(d(1-ε²)/(1-dε²)); math.inf when
    dε² >= 1."""
    if d < 1 or not 0 <= eps < 1:
        raise ValueError(f"need d >= 1 and 0 <= eps < 1, got d={d}, eps={eps}.")
    if d * eps**2 >= 1:
        return math.inf
    return float(math.floor(d * (1 - eps**2) / (1 - d * eps**2) + 1e-9))


def log_welch_bound_k(d: int, eps: float, k: int) -> float:
    """Natural log of the k-th Welch bound on N for ε-orthogonal vectors; math.inf when vacuous."""
    log_c = math.lgamma(d + k) - math.lgamma(k + 1) - math.lgamma(d)     # log C(d+k-1, k)
    log_ce = log_c + 2 * k * math.log(eps) if eps > 0 else -math.inf
    if log_ce >= 0:
        return math.inf
    return log_c + math.log1p(-eps ** (2 * k)) - math.log1p(-math.exp(log_ce))


def best_log_welch_bound(d: int, eps: float, k_max: int = 2000) -> tuple[float, int]:
    """(log N, k): the tightest of the Welch bounds k = 1..k_max."""
    return min((log_welch_bound_k(d, eps, k), k) for k in range(1, k_max + 1))


def welch_coherence_floor(n: int, d: int, k_max: int = 8) -> tuple[float, int]:
    """(floor, k): the largest of the Welch lower bounds on the coherence of n unit vectors in R^d,
    max_{i≠j} |<u_i,u_j>| >= ((n / C(d+k-1, k) - 1) / (n - 1))^{1/(2k)}, over k = 1..k_max, and
    the k that gives it. Order k says something only once n > C(d+k-1, k) (for k = 1: n > d);
    (0.0, 0) when no order does. Past n = d(d+1)/2 the k = 2 floor exists and soon overtakes the
    first one (n = 34M, d = 4096: 0.0173 against 0.0156)."""
    floors = [(((n / math.comb(d + k - 1, k) - 1) / (n - 1)) ** (1 / (2 * k)), k)
              for k in range(1, k_max + 1) if n > math.comb(d + k - 1, k)]
    return max(floors, default=(0.0, 0))


def log2_kabatyanskii_levenshtein(d: int, eps: float) -> float:
    """d · rate(ε): the leading term of log2 of the Kabatyanskii-Levenshtein bound on N for
    |cos| <= ε. Meaningful where it is much larger than log2(d); see the module docstring."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}.")
    s = math.sqrt(1 - eps**2)  # sin θ with cos θ = ε
    a, b = (1 + s) / (2 * s), (1 - s) / (2 * s)
    rate = a * math.log2(a) - (b * math.log2(b) if b > 0 else 0.0)
    return d * rate


def log_random_packing(d: int, eps: float) -> float:
    """Natural log of the random-packing lower estimate N = exp(dε²/4)."""
    return d * eps**2 / 4


def max_coherence(U: Tensor) -> float:
    """max_{i≠j} |cos(u_i, u_j)| for the rows of U [N, d]."""
    V = torch.nn.functional.normalize(U.float(), dim=-1)
    G = (V @ V.T).abs()
    G.fill_diagonal_(0)
    return float(G.max())


def random_unit_vectors(n: int, d: int, seed: int = 0) -> Tensor:
    """[n, d] independent uniformly random unit vectors."""
    U = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return U / U.norm(dim=-1, keepdim=True)


def pack_directions(n: int, d: int, steps: int = 500, lr: float = 0.01, temperature: float = 30.0,
                    seed: int = 0) -> Tensor:
    """[n, d] unit vectors with small max coherence, by gradient descent on a soft maximum of |cos|.

    Minimises (1/T)·logsumexp(T·|<u_i,u_j>|) over pairs, renormalising after each Adam step;
    starts from random vectors, so the gain over ``random_unit_vectors`` is what optimisation buys.
    """
    U = random_unit_vectors(n, d, seed).requires_grad_()
    opt = torch.optim.Adam([U], lr=lr)
    mask = ~torch.eye(n, dtype=torch.bool)
    for _ in range(steps):
        V = torch.nn.functional.normalize(U, dim=-1)
        cos = (V @ V.T)[mask].abs()
        loss = torch.logsumexp(temperature * cos, dim=0) / temperature
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.nn.functional.normalize(U.detach(), dim=-1)
