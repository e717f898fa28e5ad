"""Is the stand-in worth studying? Train a TopK SAE on its middle layer and look at what latents mean.

    python scripts/standin_sae_check.py [--tokens 3000000] [--latents 25]

Caches 4,000 windows (508k tokens, BOS dropped) at blocks.2.hook_resid_post, trains TopKSAE(256, 2048, k=16),
splices it into the model on held-out plays (CE loss recovered, KL, FVU), then prints the top contexts
(the four tokens before, and the [activating token]) of randomly chosen latents. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import sae_minimal as sm
from sae_minimal.lm.activations import cache_activations
from sae_minimal.lm.evaluation import splice_eval
from sae_minimal.lm.models import load_lm
from sae_minimal.lm.text import corpus_tokens

HOOK = "blocks.2.hook_resid_post"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=3_000_000)
    ap.add_argument("--latents", type=int, default=25)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_lm("standin")
    tokens = corpus_tokens(model.tokenizer, "train", 128, n_windows=4000, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        store = cache_activations(model, HOOK, tokens, tmp)
        sae = sm.TopKSAE(store.d, 2048, k=16)
        sm.train_sae(sae, store.batches(batch_size=1024, n_tokens=args.tokens), n_tokens=args.tokens, batch_size=1024)
        acts = store.load_all(200_000)
    held = corpus_tokens(model.tokenizer, "held_out", 128, n_windows=64, seed=0)
    metrics = splice_eval(model, sae, HOOK, held)
    print("held-out splice:", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    with torch.no_grad():
        z = torch.cat([sae.encode(a) for a in acts.split(8192)])
    ids = tokens[:, 1:].reshape(-1)[: len(acts)]       # the store keeps the tokens' order
    density = (z > 0).float().mean(0)
    dec = model.tokenizer.decode
    for lat in torch.randperm(sae.d_sae, generator=torch.Generator().manual_seed(1))[: args.latents].tolist():
        ctx = [f"{dec(ids[max(0, i - 4):i].tolist())[-14:]}[{dec([int(ids[i])])}]".replace("\n", "⏎")
               for i in z[:, lat].topk(6).indices.tolist()]
        print(f"latent {lat:4d} (fires on {density[lat]:.2%}): " + " | ".join(ctx))


if __name__ == "__main__":
    main()
