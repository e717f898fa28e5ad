"""A first SAE in under a minute: `python -m sae_minimal.course.demo`.

Builds activations that are sparse sums of 128 known feature directions squeezed into 64 dimensions
(superposition), trains a TopK SAE on them, and reports how many of the true features it found.
"""

from __future__ import annotations

import argparse

import torch

from .. import TopKSAE, metrics, train_sae
from ..metrics import recovery
from ..synthetic import make_synthetic


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens (default 1M)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    print("sae-minimal demo: TopK SAE on synthetic superposition (no model, no download)")
    data = make_synthetic(d_in=64, n_features=128, n_samples=60_000, p=0.03, seed=args.seed)
    true_l0 = float((data.codes > 0).sum(-1).float().mean())
    print(f"  data: 60,000 activations in R^64, 128 true features, {true_l0:.1f} active per input")
    sae = TopKSAE(d_in=64, d_sae=256, k=6, seed=args.seed)
    train_sae(sae, data.activations[:55_000], n_tokens=args.tokens, batch_size=512, seed=args.seed)
    x = data.activations[55_000:]  # held out
    with torch.no_grad():
        out = sae(x)
    rec = recovery(sae, data.dictionary)
    result = {"fvu": metrics.fvu(x, out.x_hat), "l0": metrics.l0(out.latents), **rec}
    print(f"  FVU {result['fvu']:.3f} | L0 {result['l0']:.1f} | true features recovered "
          f"(cos > 0.9): {rec['frac_recovered']:.0%} | MMCS to truth {rec['mmcs']:.3f}")
    print("Next: open JupyterLab (`jupyter lab`) and start with notebooks/00_introduction.ipynb")
    return result


if __name__ == "__main__":
    main()
