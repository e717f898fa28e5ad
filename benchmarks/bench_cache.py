"""Activation-caching throughput next to the bare forward pass to the same layer.

    python benchmarks/bench_cache.py [--model standin|gpt2-shaped] [--hook blocks.2.hook_resid_post] [--windows 256]

"bare forward" runs the model to the hook with stop_at_layer and throws the activations away; "cache" is
cache_activations writing safetensors shards (and meta.json) to a temporary folder. The ratio is what the
store costs on top of the model. Then a TopK SAE trains from the store's shuffled batches, and the time spent
waiting for the next batch (the data path) is reported as a share of the training loop.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import sae_minimal as sm
from sae_minimal.lm.activations import cache_activations, run_to_hook


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("standin", "gpt2-shaped"), default="standin")
    ap.add_argument("--hook", default=None)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    if args.model == "standin":
        from sae_minimal.lm.models import load_lm
        from sae_minimal.lm.text import corpus_tokens
        model = load_lm("standin", verbose=False)
        tokens = corpus_tokens(model.tokenizer, "train", args.context, args.windows)
        hook = args.hook or "blocks.2.hook_resid_post"
    else:
        from sae_minimal.lm.models import gpt2_shaped
        model = gpt2_shaped()
        tokens = torch.randint(0, 50257, (args.windows, args.context), generator=torch.Generator().manual_seed(0))
        hook = args.hook or "blocks.5.hook_resid_post"
    n_tok = tokens.numel()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {args.model}, hook {hook}, "
          f"{args.windows} windows x {args.context} = {n_tok:,} tokens")

    run_to_hook(model, tokens[:2], hook)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(tokens), args.batch_size):
        run_to_hook(model, tokens[i:i + args.batch_size], hook)
    bare = n_tok / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = cache_activations(model, hook, tokens, tmp, batch_size=args.batch_size, progress=False,
                                  shard_rows=8192)
        cached = n_tok / (time.perf_counter() - t0)
        rows = len(store)
        sae = sm.TopKSAE(store.d, 8 * store.d, k=32)
        hist = sm.train_sae(sae, store.batches(batch_size=1024, buffer_rows=16384), batch_size=1024, progress=False)
    print(f"bare forward to the hook: {bare:10,.0f} tokens/s")
    print(f"cache_activations:        {cached:10,.0f} tokens/s  ({cached / bare:.0%} of bare; {rows:,} rows stored, "
          f"BOS dropped, {len(store.meta['shards'])} shards)")
    print(f"train_sae from store.batches(): {hist['seconds']:.1f} s, of which {hist['data_seconds']:.2f} s "
          f"({hist['data_seconds'] / hist['seconds']:.1%}) waiting for batches (shard reads + shuffling buffer)")


if __name__ == "__main__":
    main()
