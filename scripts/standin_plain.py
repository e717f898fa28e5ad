"""The stand-in model in plain PyTorch, for machines without transformer-lens.

``scripts/build_reference_saes.py --plain-model`` uses it where transformer-lens cannot be
installed (the GPU machine the shipped references were built on has torch, safetensors and
transformers, but no transformer-lens). It computes what ``load_standin()``'s HookedTransformer
computes, from the same float16 weights: a 4-layer GPT-2-style transformer (pre-LayerNorm,
learned positions, gelu_new, untied unembedding), Radford et al. 2019. ``tests/test_references.py``
checks it against the HookedTransformer on held-out windows.

It offers the few pieces of HookedTransformer's interface the package's activation cache and
``evaluation.splice_eval`` use: ``cfg`` (d_vocab, n_ctx, device), ``hook_dict``, ``tokenizer``,
``__call__`` (logits; from a residual stream with ``start_at_layer``), ``run_with_hooks`` (with
``stop_at_layer``) and ``run_with_cache``, with hooks at ``blocks.{i}.hook_resid_post`` only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file
from torch import Tensor

from sae_minimal.lm.models import STANDIN_DIR, STANDIN_NAME, standin_file, standin_tokenizer


class _Config(SimpleNamespace):
    def to_dict(self) -> dict:                  # what models.fingerprint reads
        return dict(vars(self))


def _layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float = 1e-5) -> Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b


def _gelu_new(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class StandinPlain(torch.nn.Module):
    """The stand-in, weights as ``load_standin`` loads them (float16 on disk, float32 here)."""

    def __init__(self, device: str | torch.device = "cpu", tokenizer: bool = True):
        super().__init__()
        cfg = json.loads((STANDIN_DIR / "config.json").read_text())["model"]
        self.cfg = _Config(**cfg, device=str(device), model_name=STANDIN_NAME, eps=1e-5)
        state = {k: v.float() for k, v in load_file(str(standin_file("model.safetensors"))).items()}
        self.w = torch.nn.ParameterDict({k.replace(".", "/"): torch.nn.Parameter(v, False)
                                         for k, v in state.items()})
        self.hook_dict = {f"blocks.{i}.hook_resid_post": None for i in range(cfg["n_layers"])}
        self.tokenizer = standin_tokenizer() if tokenizer else None
        self.to(device).eval()

    def _p(self, name: str) -> Tensor:
        return self.w[name.replace(".", "/")]

    def _block(self, i: int, resid: Tensor) -> Tensor:
        """resid [batch, pos, d_model] -> blocks.{i}.hook_resid_post."""
        p = lambda n: self._p(f"blocks.{i}.{n}")                       # noqa: E731
        x = _layer_norm(resid, p("ln1.w"), p("ln1.b"))
        q = torch.einsum("bpd,hde->bphe", x, p("attn.W_Q")) + p("attn.b_Q")
        k = torch.einsum("bpd,hde->bphe", x, p("attn.W_K")) + p("attn.b_K")
        v = torch.einsum("bpd,hde->bphe", x, p("attn.W_V")) + p("attn.b_V")
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.cfg.d_head)
        n = resid.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=resid.device).tril()
        pattern = scores.masked_fill(~causal, -torch.inf).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        resid = resid + torch.einsum("bqhe,hed->bqd", z, p("attn.W_O")) + p("attn.b_O")
        x = _layer_norm(resid, p("ln2.w"), p("ln2.b"))
        h = _gelu_new(x @ p("mlp.W_in") + p("mlp.b_in"))
        return resid + h @ p("mlp.W_out") + p("mlp.b_out")

    @torch.no_grad()
    def run_with_hooks(self, tokens: Tensor, *, fwd_hooks=(), stop_at_layer: int | None = None,
                       start_at_layer: int | None = None, **_) -> Tensor:
        """Logits [batch, pos, d_vocab] (or the residual stream before block ``stop_at_layer``);
        each hook ``fn(act, hook)`` may return a replacement for its activation. With
        ``start_at_layer``, ``tokens`` is the residual stream [batch, pos, d_model] before that
        block (what ``activations.run_from_hook`` passes), as in HookedTransformer."""
        hooks = dict(fwd_hooks)
        unknown = set(hooks) - set(self.hook_dict)
        if unknown:
            raise ValueError(f"StandinPlain has hooks {list(self.hook_dict)} only, not {unknown}.")
        if start_at_layer is None:
            tokens = tokens.to(self.cfg.device)
            resid = self._p("embed.W_E")[tokens] + self._p("pos_embed.W_pos")[:tokens.shape[1]]
        else:
            resid = tokens.to(self.cfg.device, torch.float32)
        for i in range(start_at_layer or 0,
                       self.cfg.n_layers if stop_at_layer is None else stop_at_layer):
            resid = self._block(i, resid)
            fn = hooks.get(f"blocks.{i}.hook_resid_post")
            if fn is not None:
                new = fn(resid, hook=None)
                resid = resid if new is None else new
        if stop_at_layer is not None:
            return resid
        x = _layer_norm(resid, self._p("ln_final.w"), self._p("ln_final.b"))
        return x @ self._p("unembed.W_U") + self._p("unembed.b_U")

    def forward(self, input: Tensor, start_at_layer: int | None = None, **_) -> Tensor:
        """HookedTransformer's call: tokens, or with ``start_at_layer`` the residual stream
        (its ``tokens=`` keyword, for attention masks, is not needed here)."""
        return self.run_with_hooks(input, start_at_layer=start_at_layer)

    @torch.no_grad()
    def run_with_cache(self, tokens: Tensor, *, names_filter: str, **_) -> tuple[Tensor, dict]:
        cache = {}

        def keep(act, hook):
            cache[names_filter] = act

        return self.run_with_hooks(tokens, fwd_hooks=[(names_filter, keep)]), cache

