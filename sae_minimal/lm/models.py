"""Language models for the practice notebooks: GPT-2 small when the hub is reachable, otherwise a
bundled stand-in trained on Shakespeare (see sae_minimal/assets/standin/MODEL_CARD.md and
scripts/build_standin.py).

    model = load_lm()               # GPT-2 small if online, else the stand-in (with a loud banner)
    model = load_lm("standin")      # always the stand-in
    SAE_MINIMAL_OFFLINE=1           # never touch the network (CI sets this)

Both are transformer-lens ``HookedTransformer``s with a tokenizer attached, so ``model.to_tokens``,
``run_with_cache(..., names_filter=hook)``, hooks and ``generate`` work the same on either.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import torch

STANDIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "standin"
STANDIN_NAME = "shakespeare-gpt2-mini"


def offline() -> bool:
    """True when SAE_MINIMAL_OFFLINE (or HF_HUB_OFFLINE) asks us not to use the network."""
    return any(os.environ.get(v, "0") not in ("", "0", "false", "False")
               for v in ("SAE_MINIMAL_OFFLINE", "HF_HUB_OFFLINE"))


def banner(name: str, reason: str) -> str:
    """The loud banner printed whenever a model is loaded."""
    if name == "gpt2":
        lines = ["MODEL IN USE: GPT-2 small (124M, 12 layers, d_model 768), "
                 "from the Hugging Face hub."]
    else:
        stats = standin_stats()
        lines = [f"MODEL IN USE: the bundled stand-in '{STANDIN_NAME}' -- NOT GPT-2 small.",
                 f"  4 layers, d_model 256, 4k-token BPE, trained on Shakespeare (held-out loss "
                 f"{stats.get('held_out_loss', float('nan')):.2f} nats/token).",
                 "  SAE numbers on it (FVU, CE loss recovered, dead fractions) "
                 "and the latents themselves",
                 "  are NOT comparable with the GPT-2 results quoted in the chapter "
                 "and the papers."]
    lines.append(f"  why: {reason}")
    width = max(map(len, lines)) + 4
    return "\n".join(["#" * width, *(f"# {line:<{width - 4}} #" for line in lines), "#" * width])


def standin_stats() -> dict:
    cfg = STANDIN_DIR / "config.json"
    return json.loads(cfg.read_text()).get("stats", {}) if cfg.exists() else {}


def standin_file(name: str) -> Path:
    """The path of one of the stand-in's shipped files; FileNotFoundError saying how to rebuild it."""
    path = STANDIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the bundled stand-in is not installed. "
                                "Rebuild it with `python scripts/build_standin.py`.")
    return path


@lru_cache(maxsize=1)
def standin_tokenizer():
    """The stand-in's tokenizer as a transformers ``PreTrainedTokenizerFast``
    (BOS = EOS = <|endoftext|>)."""
    from transformers import PreTrainedTokenizerFast

    path = standin_file("tokenizer.json")
    # add_bos_token / name_or_path: transformer-lens otherwise tries to re-download the
    # tokenizer by name
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   add_bos_token=True, name_or_path=str(STANDIN_DIR))


def load_standin(device: str | torch.device = "cpu"):
    """The bundled stand-in as a HookedTransformer (weights stored in fp16, returned in fp32)."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    weights = standin_file("model.safetensors")
    cfg = json.loads((STANDIN_DIR / "config.json").read_text())["model"]
    config = HookedTransformerConfig(**{**cfg, "device": str(device), "model_name": STANDIN_NAME})
    model = HookedTransformer(config, tokenizer=standin_tokenizer())
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def load_gpt2(device: str | torch.device = "cpu"):
    """GPT-2 small from the hub via transformer-lens (needs the network the first time)."""
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained("gpt2", device=str(device)).eval()


def load_lm(name: str | None = None, *, device: str | torch.device = "cpu", verbose: bool = True):
    """Load a language model for the notebooks.

    name: "gpt2", "standin", or None (GPT-2 unless SAE_MINIMAL_OFFLINE=1; falls back to the
    stand-in when the hub cannot be reached). Always prints a banner saying which model is in use
    and why.
    """
    if name not in (None, "gpt2", "standin"):
        raise ValueError(f"name must be 'gpt2', 'standin' or None, got {name!r}.")
    if name == "standin" or (name is None and offline()):
        reason = ("asked for explicitly" if name == "standin"
                  else "SAE_MINIMAL_OFFLINE=1 (no network use)")
        model, used = load_standin(device), "standin"
    else:
        try:
            model, used, reason = load_gpt2(device), "gpt2", "the hub was reachable"
        except Exception as e:  # noqa: BLE001 -- any hub/network failure means: fall back
            if name == "gpt2":
                raise RuntimeError("Could not load GPT-2 small from the hub "
                                   f"({type(e).__name__}: {e}). Use "
                                   "load_lm('standin') or set SAE_MINIMAL_OFFLINE=1 "
                                   "to work offline.") from e
            model, used = load_standin(device), "standin"
            reason = (f"GPT-2 small could not be downloaded ({type(e).__name__}); "
                      "fell back to the stand-in")
    if verbose:
        print(banner(used, reason))
    return model


def lm_name(model) -> str:
    """"standin" for the bundled stand-in, else the model's own ``cfg.model_name`` ("gpt2" for
    GPT-2 small)."""
    name = model.cfg.model_name
    return "standin" if name == STANDIN_NAME else name


def gpt2_shaped(n_layers: int = 12, seed: int = 0):
    """GPT-2 small's *architecture* (d_model 768, 12 heads, d_mlp 3072, vocab 50257) with random
    weights: exercises the GPT-2-shaped code path offline. Not a language model -- its outputs are
    noise."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=768, n_heads=12, d_head=64,
                                  d_mlp=3072, n_ctx=1024, d_vocab=50257, act_fn="gelu_new",
                                  normalization_type="LN", seed=seed,
                                  original_architecture="GPT2LMHeadModel")
    return HookedTransformer(cfg).eval()
