"""Feature dashboards without a web service: everything needed to guess what a latent means, as
HTML.

    acts = LatentContext(model, sae, "blocks.2.hook_resid_post", tokens)    # runs the model once
    feature_dashboard(acts, latent=123)                                      # renders in Jupyter
    feature_dashboard(acts, latent=123, save_path="latent123.html")          # or a standalone file

Sections: firing density and max activation; top-activating contexts with tokens shaded by
activation; samples from activation quantiles (what *typical* firing looks like, not just the
extremes); a histogram of non-zero activations; the decoder direction's direct logit effect (tokens
it promotes and suppresses through the unembedding); and the nearest latents by decoder cosine.

**BOS.** Position 0 of every window (BOS) is outside the SAE's training data, so its activations
are set to 0 here: densities, maxima and contexts leave it out (SAEDashboard's densities count it,
so a latent that fires on BOS shows one firing per window more there). ``sae`` may be one of ours
or a SAELens SAE object (``io.as_sae`` translates it).

**Tokens** are shown so that none is invisible or a "�": newline as ↵, tab as ⇥, other control
characters and bytes that are not a whole UTF-8 character (byte-level BPE splits some characters
into several tokens) as <0xE2>, and, where a token stands alone, spaces as · (" the" -> "·the").
"""

from __future__ import annotations

import base64
import copy
import html
import io
import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from .activations import run_to_hook
from ..io import as_sae
from .validate import check_hook, check_latent, check_tokens, check_width, module_device

VISIBLE = {"\n": "↵", "\t": "⇥"}   # what decode_token shows for these characters


class LatentContext:
    """Activations of ``tokens`` [n, context] at ``hook_name``, kept so that many dashboards share
    one forward pass. ``latent_acts(i)`` -> [n, context] activation of latent i (BOS position set
    to 0)."""

    def __init__(self, model, sae, hook_name: str, tokens: Tensor, batch_size: int = 32):
        check_hook(model, hook_name)
        check_tokens(model, tokens)
        sae = as_sae(sae)
        self.model, self.sae, self.hook_name, self.tokens = model, sae, hook_name, tokens
        self.acts = torch.cat([run_to_hook(model, tokens[i:i + batch_size], hook_name)
                               for i in range(0, len(tokens), batch_size)])  # [n, context, d_in]
        check_width(self.acts.shape[-1], sae.d_in, hook_name)

    @torch.no_grad()
    def latent_acts(self, latent: int, chunk: int = 8192) -> Tensor:
        latent = check_latent(latent, self.sae.d_sae)
        flat = self.acts.reshape(-1, self.acts.shape[-1])   # [n·context, d_in]
        flat = flat.to(module_device(self.sae, flat.device))
        col = torch.cat([self.sae.encode(flat[i:i + chunk])[:, latent]
                         for i in range(0, len(flat), chunk)])
        # [n, context], on the CPU with the tokens: the dashboards index one with the other
        col = col.reshape(self.acts.shape[:2]).cpu().clone()
        col[:, 0] = 0.0   # BOS is outside the SAE's training distribution
        return col

    def token_str(self, token_id: int) -> str:
        return decode_token(self.model, token_id)

    def with_sae(self, sae) -> "LatentContext":
        """The same tokens and activations read through another SAE (no new forward pass)."""
        sae = as_sae(sae)
        check_width(self.acts.shape[-1], sae.d_in, self.hook_name)
        other = copy.copy(self)
        other.sae = sae
        return other


def top_contexts(ctx: LatentContext, latent: int, n: int = 5, before: int = 8) -> list[str]:
    """Plain-text top activations of ``latent``, one per window: "activation  ...context[token]"
    (tokens shown as ``decode_token`` shows them: newlines as ↵)."""
    acts = ctx.latent_acts(latent)      # [n, context], latent checked there
    best = acts.max(dim=1)
    lines = []
    for row in best.values.argsort(descending=True)[:n].tolist():
        value, pos = float(best.values[row]), int(best.indices[row])
        if value <= 0:
            break
        left = "".join(ctx.token_str(t) for t in ctx.tokens[row, max(1, pos - before):pos])
        lines.append(f"{value:6.2f}  ...{left}[{ctx.token_str(ctx.tokens[row, pos])}]")
    return lines


def decode_token(model, token_id: int, *, alone: bool = False) -> str:
    """One token as visible text (module docstring): ``alone`` also shows spaces as ·. Models
    without a tokenizer (random test models) show the id."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return f"<{int(token_id)}>"
    text = tok.decode([int(token_id)])
    if "\ufffd" in text:  # part of a character: show its bytes
        text = _token_bytes(tok, int(token_id)).decode("utf-8", errors="surrogateescape")
    text = "".join(_visible(ch) for ch in text)
    return text.replace(" ", "·") if alone else text


def _visible(ch: str) -> str:
    """A character as it is shown: itself, or a visible stand-in for one a browser draws as
    nothing or a box."""
    if ch in VISIBLE:
        return VISIBLE[ch]
    if 0xDC80 <= ord(ch) <= 0xDCFF:          # a byte that surrogateescape could not decode
        return f"<0x{ord(ch) - 0xDC00:02X}>"
    if unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn"):   # control, zero-width, unassigned
        return f"<0x{ord(ch):02X}>" if ord(ch) < 256 else f"<U+{ord(ch):04X}>"
    return ch


def _token_bytes(tok, token_id: int) -> bytes:
    """The bytes of one token: from GPT-2's byte-level alphabet (``convert_ids_to_tokens``), or a
    SentencePiece byte token such as "<0xE2>"; b"\\xef\\xbf\\xbd" ("�") when neither applies."""
    piece = tok.convert_ids_to_tokens(token_id)
    if isinstance(piece, str):
        byte_of = _byte_level_alphabet()
        if piece and all(ch in byte_of for ch in piece):
            return bytes(byte_of[ch] for ch in piece)
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            return bytes([int(piece[3:5], 16)])
    return "\ufffd".encode()


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet inverted (Radford et al. 2019, ``bytes_to_unicode``): the
    printable character standing for each of the 256 bytes -> that byte. Printable Latin-1 bytes
    stand for themselves; the others are shifted to 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


class Dashboard:
    """An HTML dashboard: shown inline in Jupyter, or written with ``save``."""

    def __init__(self, html_text: str, latent: int):
        self.html, self.latent = html_text, latent

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
        path.write_text(f"<!doctype html><meta charset='utf-8'><title>latent {self.latent}</title>"
                        f"<body style='font-family:sans-serif;max-width:60em'>{self.html}</body>")
        return path


def _shade(ctx: LatentContext, row: int, pos: int, acts: Tensor, vmax: float, before: int,
           after: int) -> str:
    spans = []
    for p in range(max(1, pos - before), min(acts.shape[1], pos + after + 1)):
        a = float(acts[row, p]) / vmax if vmax > 0 else 0.0
        text = html.escape(ctx.token_str(ctx.tokens[row, p]))
        border = "border-bottom:2px solid #333;" if p == pos else ""
        spans.append(f"<span title='{float(acts[row, p]):.3f}' "
                     f"style='background:rgba(255,120,0,{max(a, 0):.2f});"
                     f"{border}white-space:pre'>{text}</span>")
    return "".join(spans)


def _histogram_png(values: Tensor) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 1.8))
    ax.hist(values.numpy(), bins=40, color="#f07800")
    ax.set(xlabel="activation (when firing)", ylabel="count")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


@torch.no_grad()
def logit_effects(model, sae, latent: int,
                  k: int = 8) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Tokens whose logits the decoder direction raises / lowers most through the unembedding
    (W_dec[i] @ W_U)."""
    sae = as_sae(sae)
    latent = check_latent(latent, sae.d_sae)
    effect = sae.W_dec[latent].float() @ model.W_U.float().to(sae.W_dec.device)
    top, bottom = effect.topk(k), (-effect).topk(k)
    return ([(decode_token(model, i, alone=True), float(v))
             for v, i in zip(top.values, top.indices)],
            [(decode_token(model, i, alone=True), -float(v))
             for v, i in zip(bottom.values, bottom.indices)])


@torch.no_grad()
def nearest_latents(sae, latent: int, k: int = 5) -> list[tuple[int, float]]:
    sae = as_sae(sae)
    latent = check_latent(latent, sae.d_sae)
    W = torch.nn.functional.normalize(sae.W_dec.float(), dim=-1)
    cos = W @ W[latent]
    cos[latent] = -2
    top = cos.topk(min(k, len(cos) - 1))
    return [(int(i), float(v)) for v, i in zip(top.values, top.indices)]


def feature_dashboard(ctx: LatentContext, latent: int, *, n_top: int = 8, n_quantiles: int = 4,
                      before: int = 10, after: int = 3, save_path: str | os.PathLike | None = None,
                      overwrite: bool = False) -> Dashboard:
    """Render the dashboard of ``latent``; also write it to ``save_path`` (refusing to overwrite)
    if given."""
    sae = ctx.sae
    latent = check_latent(latent, sae.d_sae)   # also a 0-d tensor such as density.argmax()
    acts = ctx.latent_acts(latent)
    body = acts[:, 1:]
    firing = body[body > 0]
    density = firing.numel() / body.numel()
    vmax = float(acts.max())
    parts = [f"<h3>Latent {latent}</h3><p>fires on <b>{density:.3%}</b> "
             f"of {body.numel():,} tokens; "
             f"max activation {vmax:.3f}; hook <code>{ctx.hook_name}</code></p>"
             "<p style='font-size:smaller'>BOS (position 0 of each window) is not counted: the "
             "SAE never sees it. Tokens: ↵ newline, ⇥ tab, &lt;0xE2&gt; a byte of a character "
             "split over several tokens, · a space in a token shown alone.</p>"]
    if firing.numel() == 0:
        parts.append("<p><i>This latent never fires on these tokens (dead here).</i></p>")
    else:
        flat = acts.flatten()   # [n·context]
        order = flat.argsort(descending=True)
        rows_seen, top = set(), []
        for idx in order.tolist():
            r, p = divmod(idx, acts.shape[1])
            if flat[idx] <= 0 or len(top) >= n_top:
                break
            if r not in rows_seen:
                rows_seen.add(r)
                top.append((r, p))
        parts.append("<h4>Top activations</h4><table>")
        parts += [f"<tr><td style='padding-right:1em'>{float(acts[r, p]):.2f}</td>"
                  "<td style='font-family:monospace'>"
                  f"{_shade(ctx, r, p, acts, vmax, before, after)}</td></tr>"
                  for r, p in top]
        parts.append("</table><h4>Quantile samples</h4><table>")
        qs = torch.quantile(firing, torch.linspace(0, 1, n_quantiles + 1))
        gen = torch.Generator().manual_seed(latent)
        for lo, hi in zip(qs[:-1].tolist(), qs[1:].tolist()):
            cand = ((acts > lo) & (acts <= hi)).nonzero()
            if len(cand):
                r, p = cand[torch.randint(len(cand), (1,), generator=gen)].squeeze(0).tolist()
                parts.append(f"<tr><td style='padding-right:1em'>{lo:.2f}-{hi:.2f}</td>"
                             "<td style='font-family:monospace'>"
                             f"{_shade(ctx, r, p, acts, vmax, before, after)}</td></tr>")
        parts.append("</table><h4>Activation histogram</h4>"
                     f"<img src='data:image/png;base64,{_histogram_png(firing)}'>")
    promoted, suppressed = logit_effects(ctx.model, sae, latent)
    fmt = lambda pairs: ", ".join(f"<code>{html.escape(t)}</code> ({v:+.2f})" for t, v in pairs)
    parts.append(f"<h4>Logit effects (W_dec @ W_U)</h4><p>promotes: {fmt(promoted)}</p>"
                 f"<p>suppresses: {fmt(suppressed)}</p>")
    parts.append("<h4>Nearest latents (decoder cosine)</h4><p>" +
                 ", ".join(f"{i} ({c:.2f})" for i, c in nearest_latents(sae, latent)) + "</p>")
    board = Dashboard("\n".join(parts), latent)
    if save_path is not None:
        board.save(save_path, overwrite=overwrite)
    return board
