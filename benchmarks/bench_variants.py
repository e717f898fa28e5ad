"""Train every variant on the same synthetic data and print one comparison table.

    python benchmarks/bench_variants.py [--tokens 600000] [--d-sae 256] [--device cpu]

Columns: training throughput (tokens/s, wall clock including the optimiser step), FVU and L0 on
held-out data, dead fraction (never fired on 20k held-out inputs), ground-truth recovery (fraction of
true features matched at cos > 0.9, and MMCS to the true dictionary), and median magnitude ratio
(recovered / true magnitude; < 1 is shrinkage).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import sae_minimal as sm
from sae_minimal.metrics import magnitude_ratio, recovery
from sae_minimal.synthetic import make_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=600_000)
    ap.add_argument("--d-sae", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    data = make_synthetic(d_in=64, n_features=128, n_samples=80_000, p=0.03, seed=0)
    train, test = data.activations[:60_000], data.activations[60_000:]
    true_l0 = (data.codes[60_000:] > 0).sum(-1).float().mean()
    print(f"torch {torch.__version__} | {platform.processor() or platform.machine()} | "
          f"{torch.get_num_threads()} threads | device {args.device}")
    print(f"data: d_in 64, 128 true features, true L0 {true_l0:.2f}; SAE d_sae {args.d_sae}; "
          f"{args.tokens:,} training tokens\n")

    variants = {
        "ReLU (L1)": lambda: sm.ReLUSAE(64, args.d_sae, l1_coeff=1.0),
        "TopK": lambda: sm.TopKSAE(64, args.d_sae, k=6),
        "BatchTopK": lambda: sm.BatchTopKSAE(64, args.d_sae, k=6),
        "JumpReLU": lambda: sm.JumpReLUSAE(64, args.d_sae),
        "Gated": lambda: sm.GatedSAE(64, args.d_sae, l1_coeff=3.0),   # λ = 1 gives L0 ~27
        "Matryoshka": lambda: sm.MatryoshkaSAE(64, args.d_sae, k=6),
    }
    sm.train_sae(sm.ReLUSAE(64, args.d_sae), train, n_tokens=50_000, progress=False)  # warm-up: one-time costs
    header = f"{'variant':<12}{'tokens/s':>10}{'FVU':>8}{'L0':>7}{'dead':>7}{'recovered':>11}{'MMCS':>7}{'mag ratio':>11}"
    print(header)
    print("-" * len(header))
    untrained = sm.TopKSAE(64, args.d_sae, k=6).eval()   # the control: what recovery is before training
    with torch.no_grad():
        out, rec = untrained(test), recovery(untrained, data.dictionary)
    print(f"{'(untrained)':<12}{'':>10}{sm.metrics.fvu(test, out.x_hat):>8.3f}"
          f"{sm.metrics.l0(out.latents):>7.2f}{'':>7}{rec['frac_recovered']:>11.1%}{rec['mmcs']:>7.3f}")
    for name, make in variants.items():
        sae = make().to(args.device)
        t0 = time.perf_counter()
        sm.train_sae(sae, train, n_tokens=args.tokens, batch_size=args.batch_size, progress=False,
                     device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        rate = args.tokens / (time.perf_counter() - t0)
        sae = sae.cpu()
        with torch.no_grad():
            out = sae(test)
            rec = recovery(sae, data.dictionary)
            ratio = magnitude_ratio(sae, data)
        print(f"{name:<12}{rate:>10,.0f}{sm.metrics.fvu(test, out.x_hat):>8.3f}{sm.metrics.l0(out.latents):>7.2f}"
              f"{sm.metrics.dead_fraction(out.latents):>7.1%}{rec['frac_recovered']:>11.1%}{rec['mmcs']:>7.3f}"
              f"{float(ratio.median()) if len(ratio) else float('nan'):>11.3f}")


if __name__ == "__main__":
    main()
