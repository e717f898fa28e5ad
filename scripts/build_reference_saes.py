"""Train the reference SAEs shipped in ``sae_minimal/assets/reference_saes`` (issue 15), once.

    python scripts/build_reference_saes.py                    # all of them (about 2 h on 2 cores)
    python scripts/build_reference_saes.py --only topk-k16-2048 --tokens 2000000 --out /tmp/refs

Every reference reads the stand-in's residual stream after block 2 (``blocks.2.hook_resid_post``,
d_in 256; BOS positions left out), and is trained by ``train_sae`` with the defaults a learner gets
(``default_lr``, warm-up, decay, AuxK where the variant has it; batch 1024), on shuffled passes over
the whole training split of the bundled corpus (1.5M tokens; the longer runs take several passes).

**Converged?** Each reference is trained twice from scratch, with the same seed: for ``--tokens``
T and for T/2 (a run stopped half-way would still be at its high learning rate, so it is not the
same thing). The card gives, for both, held-out FVU, the dead fraction and the MMCS to the same
variant's other seed, and calls a reference converged when, from T/2 to T, FVU and MMCS change by
under 2% relative and the dead fraction by under 2% relative or 0.2 percentage points (a relative
change of a fraction near 0, 0.1% to 0.2% of latents, is noise, not a trend). Held-out metrics are
measured on the held-out plays (Hamlet, The Tempest, Twelfth Night: 134k activations; CE loss
recovered and KL from 256 windows spliced), after the weights are rounded to the float16 that is
shipped, so the card describes the files.

Deterministic: the data order and the initialisation come from each run's seed (one thread, so the
floating-point sums come out the same). Runtime is printed per run and written to the card.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

import sae_minimal as sm
from sae_minimal.lm.activations import cache_activations, run_to_hook
from sae_minimal.lm.evaluation import evaluate_sae, latent_density
from sae_minimal.lm.models import fingerprint, load_lm
from sae_minimal.lm.text import corpus_tokens
from sae_minimal.lm.references import CARD_JSON, HOOK, REFERENCE_DIR, card_markdown, convergence

D_IN = 256
BATCH = 1024
SPLICE_WINDOWS = 256   # held-out windows for CE loss recovered and KL (32k tokens)

# name -> (constructor, keyword arguments, seeds): 04's middle setting of each
# variant at 2048 latents with a twin for MMCS, and the widths 06 compares.
REFERENCES = {
    "l1-2048":              (sm.ReLUSAE, {"d_sae": 2048, "l1_coeff": 3.0}, (0, 1)),
    "topk-k16-2048":        (sm.TopKSAE, {"d_sae": 2048, "k": 16}, (0, 1)),
    "batchtopk-k16-2048":   (sm.BatchTopKSAE, {"d_sae": 2048, "k": 16}, (0, 1)),
    "jumprelu-2048":        (sm.JumpReLUSAE, {"d_sae": 2048, "l0_coeff": 0.3}, (0, 1)),
    "matryoshka-k16-2048":  (sm.MatryoshkaSAE, {"d_sae": 2048, "k": 16}, (0, 1)),
    "topk-k16-512":         (sm.TopKSAE, {"d_sae": 512, "k": 16}, (0,)),
    "topk-k16-8192":        (sm.TopKSAE, {"d_sae": 8192, "k": 16}, (0,)),
    "matryoshka-k16-8192":  (sm.MatryoshkaSAE, {"d_sae": 8192, "k": 16}, (0,)),
}


def as_shipped(sae):
    """The SAE as its float16 files will load: weights rounded to float16, back in float32."""
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(p.half().float())
    return sae


def curve(history, points: int = 60) -> dict:
    """The training curve thinned to about ``points`` entries (training-batch FVU, L0, dead)."""
    step = max(1, len(history["tokens"]) // points)
    return {k: [round(float(v), 5) for v in history[k][::step]]
            for k in ("tokens", "fvu", "l0", "dead_frac") if k in history}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8_000_000, help="training tokens T of each run")
    ap.add_argument("--only", nargs="*", default=None, help="names to build (default: all)")
    ap.add_argument("--out", default=str(REFERENCE_DIR), help="where the SAEs and card go")
    ap.add_argument("--work", default="build/reference_saes", help="activation cache folder")
    ap.add_argument("--overwrite", action="store_true", help="replace existing references")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    names = args.only or list(REFERENCES)
    unknown = sorted(set(names) - set(REFERENCES))
    if unknown:
        sys.exit(f"Unknown reference(s) {unknown}; choose from {list(REFERENCES)}.")
    if out.exists() and any((out / n).exists() for n in names) and not args.overwrite:
        sys.exit(f"{out} already holds some of {names}; pass --overwrite to rebuild them.")

    model = load_lm("standin")
    tokens = corpus_tokens(model.tokenizer, "train")                  # every training window
    store = cache_activations(model, HOOK, tokens, Path(args.work) / "activations")
    held = corpus_tokens(model.tokenizer, "held_out")
    with torch.no_grad():
        x_eval = torch.cat([run_to_hook(model, held[i:i + 32], HOOK)[:, 1:].reshape(-1, D_IN)
                            for i in range(0, len(held), 32)]).float()
    mean_act = x_eval.mean(0)
    splice_tokens = held[torch.randperm(len(held), generator=torch.Generator().manual_seed(0))
                         [:SPLICE_WINDOWS]]
    print(f"{len(store):,} training activations, {len(x_eval):,} held-out; T = {args.tokens:,}")

    card = json.loads((out / CARD_JSON).read_text()) if (out / CARD_JSON).exists() else {}
    card.update({"hook": HOOK, "model": "standin", "model_fingerprint": fingerprint(model),
                 "training_activations": len(store), "held_out_activations": len(x_eval),
                 "batch_size": BATCH, "torch": torch.__version__, "sae_minimal": sm.__version__})
    card.setdefault("saes", {})
    for name in names:
        cls, kw, seeds = REFERENCES[name]
        budget = args.tokens
        runs = {}
        for n_tokens in (budget // 2, budget):
            for seed in seeds:
                sae = cls(D_IN, seed=seed, **kw)
                t0 = time.perf_counter()
                hist = sm.train_sae(sae, store.batches(BATCH, n_tokens=n_tokens, seed=seed),
                                    n_tokens=n_tokens, batch_size=BATCH, seed=seed, progress=False)
                seconds = time.perf_counter() - t0
                as_shipped(sae.eval())
                density = latent_density(sae, x_eval)
                metrics = evaluate_sae(model, sae, HOOK, x_eval, splice_tokens, density=density,
                                       mean_act=mean_act)
                runs[n_tokens, seed] = (sae, density, {**metrics, "seconds": round(seconds, 1),
                                                       "lr": max(hist["lr"]), "curve": curve(hist)})
                print(f"{name} seed {seed} {n_tokens:>10,} tokens {seconds:7.0f} s  "
                      + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        if len(seeds) == 2:
            for n_tokens in (budget // 2, budget):
                (a, da, ma), (b, _, _) = runs[n_tokens, seeds[0]], runs[n_tokens, seeds[1]]
                ma["mmcs"] = sm.metrics.mmcs(a.W_dec[da > 0], b.W_dec)   # a's alive latents
        entry = {"class": cls.__name__, "config": runs[budget, seeds[0]][0].config(),
                 "tokens": budget, "seeds": list(seeds),
                 "runs": {f"{n}/seed{s}": r[2] for (n, s), r in runs.items()}}
        entry["converged"] = convergence(runs[budget // 2, seeds[0]][2], runs[budget, seeds[0]][2])
        if (out / CARD_JSON).exists():      # another build process may have added SAEs since
            card["saes"] = {**json.loads((out / CARD_JSON).read_text())["saes"], **card["saes"]}
        card["saes"][name] = entry
        card["saes"] = {n: card["saes"][n] for n in REFERENCES if n in card["saes"]}
        for seed in seeds:
            folder = out / (name if seed == seeds[0] else f"{name}-seed{seed}")
            shutil.rmtree(folder, ignore_errors=True)
            sm.save_sae(runs[budget, seed][0].half(), folder, hook_name=HOOK, model_name="standin",
                        metadata={"context_size": 128, "prepend_bos": True})
        out.mkdir(parents=True, exist_ok=True)
        (out / CARD_JSON).write_text(json.dumps(card, indent=1) + "\n")
        (out / "REFERENCE_CARD.md").write_text(card_markdown(card))


if __name__ == "__main__":
    main()
