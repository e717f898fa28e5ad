"""Peak resident memory (RSS) of two jobs, each in a fresh subprocess so the numbers do not mix:

    python benchmarks/bench_memory.py [--cache-tokens 1000000]

1. training: TopKSAE d_in 768 x d_sae 24576 (k 32), 5 steps of batch 1024 with Adam (parameters, gradients and
   Adam state dominate: about 4 x 2 x 18.9M floats = 0.6 GB);
2. caching: --cache-tokens tokens of a d_model-768 GPT-2-shaped model (1 layer, random weights) to disk with
   cache_activations, which streams shards to disk instead of holding the activations (3 GB at 1M tokens).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

TRAIN = """
import torch, sae_minimal as sm
sae = sm.TopKSAE(768, 24576, k=32)
x = torch.randn(8192, 768)
sm.train_sae(sae, x, n_tokens=5 * 1024, batch_size=1024, progress=False)
"""

CACHE = """
import sys, tempfile, torch
from sae_minimal.lm.models import gpt2_shaped
from sae_minimal.lm.activations import cache_activations
n_tokens = int(sys.argv[1])
model = gpt2_shaped(n_layers=1)
tokens = torch.randint(0, 50257, (n_tokens // 128 + 1, 129), generator=torch.Generator().manual_seed(0))
with tempfile.TemporaryDirectory() as tmp:
    store = cache_activations(model, "blocks.0.hook_resid_post", tokens, tmp, batch_size=64, progress=False)
    print(len(store), "rows cached")
"""


REPORT = "\nimport resource\nprint('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"


def peak_rss_mb(code: str, *args: str) -> float:
    """Run ``code`` in a fresh interpreter; return that process's own peak RSS."""
    out = subprocess.run([sys.executable, "-c", code + REPORT, *args], check=True, capture_output=True, text=True).stdout
    return int(out.split("PEAK_KB")[-1]) / 1024  # kB -> MB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-tokens", type=int, default=1_000_000)
    args = ap.parse_args()
    train = peak_rss_mb(TRAIN)
    print(f"peak RSS, TopK 768 x 24576 training (batch 1024):        {train:8,.0f} MB")
    cache = peak_rss_mb(CACHE, str(args.cache_tokens))
    print(f"peak RSS, caching {args.cache_tokens:,} tokens at d_model 768:  {cache:8,.0f} MB "
          f"(the activations alone would be {args.cache_tokens * 768 * 4 / 1e6:,.0f} MB)")


if __name__ == "__main__":
    main()
