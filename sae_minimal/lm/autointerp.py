"""Automated interpretability, offline first: explain a latent from its top-activating contexts,
then score the explanation by how well it predicts firing on held-out contexts.

    explainer = TokenExplainer()                          # offline baseline (no LLM)
    sim = KeywordSimulator(vocab)                         # predicts firing from any explanation
    result = score_latent(explainer, sim, explain_set, score_set, vocab)
    result.detection, result.fuzzing, result.explanation.text

The protocol is Bills et al. (2023)'s explain-then-simulate, scored the way Paulo et al. (2024,
"Automatically interpreting millions of features in LLMs") score it cheaply: **detection** (does
the latent fire anywhere in this short context? balanced accuracy over as many firing as
non-firing contexts) and a token-level **fuzzing** variant (which tokens of a firing context
fire?). Paulo et al.'s fuzzing shows highlighted tokens and asks whether the highlighting is right;
ours asks the simulator to mark the tokens itself, which is the same question without the decoy.

Two explainers share one interface (``explain(examples) -> Explanation``):

- ``TokenExplainer``: offline. Greedily picks the current tokens ("on") and previous tokens
  ("after") whose presence best predicts firing (F1) over the example contexts' positions.
- ``LLMExplainer(client)``: a real LLM, through a client whose ``complete(prompt) -> str`` you
  supply. ``AnthropicClient`` / ``OpenAIClient`` read an API key from the environment and refuse
  to run unless you pass ``allow_network=True`` and ``SAE_MINIMAL_OFFLINE`` is unset. Nothing in the
  tests or notebooks calls them; the tests use a fake client.

Explanations are text. Both simulators read text: ``KeywordSimulator`` parses quoted tokens
(clauses starting with "after" name previous tokens), so it can score an LLM's explanation too as
long as it quotes tokens; ``LLMSimulator(client)`` asks the LLM.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from ..io import as_sae
from ..metrics import f1_from_counts
from .evaluation import codes_of
from .models import offline


# --- data ----------------------------------------------------------------------------------------
class Contexts(NamedTuple):
    """Short contexts cut from token windows, with one latent's activations.

    tokens [n, L] token ids, acts [n, L] activations (BOS never included)."""

    tokens: Tensor
    acts: Tensor


def cut_contexts(tokens: Tensor, acts: Tensor, length: int = 16) -> Contexts:
    """Cut windows ``tokens`` [n, ctx] (BOS at position 0) and activations ``acts`` [n, ctx] (or
    [n, ctx - 1] without BOS) into non-overlapping contexts of ``length`` tokens, BOS dropped.
    The activations were computed on the whole window, so each context keeps its left context."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_windows, context], got shape {tuple(tokens.shape)}.")
    if acts.shape[:1] != tokens.shape[:1] or acts.shape[1] not in (tokens.shape[1],
                                                                   tokens.shape[1] - 1):
        raise ValueError(f"acts {tuple(acts.shape)} must match tokens {tuple(tokens.shape)} "
                         "(with or without the BOS column).")
    body_t = tokens[:, 1:]
    body_a = acts[:, 1:] if acts.shape[1] == tokens.shape[1] else acts
    n = body_t.shape[1] // length
    if n == 0:
        raise ValueError(f"Windows of {tokens.shape[1]} tokens hold no context of {length}.")
    cut = lambda t: t[:, :n * length].reshape(-1, length)   # noqa: E731
    return Contexts(cut(body_t), cut(body_a).float())


@torch.no_grad()
def latent_codes(sae, x: Tensor, latents: Tensor | list[int], chunk: int = 8192) -> Tensor:
    """Activations [N, len(latents)] of the chosen latents on x [N, d_in]. The whole code is
    computed chunk by chunk (TopK's selection needs every latent) and only the chosen columns
    kept."""
    sae = as_sae(sae)
    return torch.cat([codes_of(sae, c, latents) for c in x.split(chunk)])


def random_direction_codes(x: Tensor, densities: Tensor, seed: int = 0) -> Tensor:
    """The control: [N, len(densities)] "latents" that are random unit directions r_j with a
    threshold set so that each fires on the same fraction of x [N, d_in] as ``densities[j]``:
    a_j = relu(x·r_j - t_j), t_j the (1 - density) quantile of x·r_j (x centred first)."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.nn.functional.normalize(torch.randn(x.shape[1], len(densities), generator=gen), dim=0)
    proj = (x - x.mean(0)) @ r                                  # [N, n]
    q = (1 - densities.clamp(1e-6, 1 - 1e-6)).float()
    t = torch.stack([torch.quantile(proj[:, j], q[j]) for j in range(len(densities))])
    return (proj - t).clamp(min=0)


# --- explanations --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Explanation:
    """What a latent means, as text. ``tokens`` / ``previous`` are the triggers the offline
    explainer found (empty for an LLM's explanation, whose meaning is only its text)."""

    text: str
    tokens: tuple[str, ...] = field(default=())
    previous: tuple[str, ...] = field(default=())


def explanation_text(tokens: tuple[str, ...], previous: tuple[str, ...]) -> str:
    """The offline explainer's wording: 'fires on "a", "b"; after "c"' (tokens JSON-quoted)."""
    q = lambda ts: ", ".join(json.dumps(t, ensure_ascii=False) for t in ts)   # noqa: E731
    parts = ([f"fires on {q(tokens)}"] if tokens else []) + ([f"after {q(previous)}"] if previous
                                                            else [])
    return "; ".join(parts) if parts else "fires on nothing recognisable"


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def parse_triggers(text: str) -> tuple[set[str], set[str]]:
    """(current-token triggers, previous-token triggers) quoted in an explanation's text. Clauses
    are separated by ";" or newlines; a clause whose first word is "after" (or "following")
    names previous tokens. Triggers are compared stripped of surrounding spaces and lower-cased."""
    now, before = set(), set()
    for clause in re.split(r"[;\n]", text):
        found = set()
        for raw in _QUOTED.findall(clause):
            try:
                s = json.loads(f'"{raw}"')
            except json.JSONDecodeError:
                s = raw
            if s.strip():
                found.add(s.strip().lower())
            elif s:
                found.add(s)   # whitespace-only token, kept as is
        words = clause.strip().lower().split()
        (before if words and words[0] in ("after", "following") else now).update(found)
    return now, before


class Example(NamedTuple):
    """One context shown to an explainer: its tokens (as text) and the latent's activations."""

    tokens: list[str]
    acts: list[float]


class Explainer(Protocol):
    def explain(self, examples: list[Example]) -> Explanation: ...


class TokenExplainer:
    """Offline baseline explainer. Over every position of the example contexts, a rule "fires if
    the token is one of T or the previous token is one of P" is grown greedily, one trigger at a
    time, as long as it raises the rule's F1 against actual firing (and each trigger fires at
    least ``min_support`` times). At most ``max_terms`` triggers."""

    def __init__(self, max_terms: int = 6, min_support: int = 2):
        self.max_terms, self.min_support = max_terms, min_support

    def explain(self, examples: list[Example]) -> Explanation:
        if not examples:
            raise ValueError("No examples to explain: the latent never fired on the explanation "
                             "set. Use more text or skip dead latents.")
        cands: dict[tuple[str, str], list[int]] = {}   # (kind, token) -> positions matching
        fired: list[bool] = []
        for ex in examples:
            if len(ex.tokens) != len(ex.acts):
                raise ValueError("Each example needs one activation per token.")
            for i, (tok, a) in enumerate(zip(ex.tokens, ex.acts)):
                pos = len(fired)
                fired.append(a > 0)
                cands.setdefault(("on", _norm(tok)), []).append(pos)
                if i > 0:
                    cands.setdefault(("after", _norm(ex.tokens[i - 1])), []).append(pos)
        fired_t = torch.tensor(fired)
        n_fire = int(fired_t.sum())
        if n_fire == 0:
            return Explanation(explanation_text((), ()))
        masks = {}
        for key, positions in cands.items():
            m = torch.zeros(len(fired), dtype=torch.bool)
            m[positions] = True
            if int((m & fired_t).sum()) >= self.min_support:
                masks[key] = m
        chosen: list[tuple[str, str]] = []
        rule = torch.zeros(len(fired), dtype=torch.bool)
        best = 0.0
        while len(chosen) < self.max_terms:
            scores = {k: _f1(rule | m, fired_t) for k, m in masks.items() if k not in chosen}
            if not scores:
                break
            key = max(scores, key=scores.get)
            if scores[key] <= best + 1e-9:
                break
            best, rule = scores[key], rule | masks[key]
            chosen.append(key)
        tokens = tuple(t for kind, t in chosen if kind == "on")
        previous = tuple(t for kind, t in chosen if kind == "after")
        return Explanation(explanation_text(tokens, previous), tokens, previous)


def _norm(tok: str) -> str:
    return tok.strip().lower() if tok.strip() else tok


def _f1(pred: Tensor, truth: Tensor) -> float:
    return float(f1_from_counts((pred & truth).sum(), pred.sum(), truth.sum()))


# --- simulators (explanation -> predicted firing) ------------------------------------------------
class Simulator(Protocol):
    def predict(self, explanation: Explanation, tokens: Tensor) -> Tensor: ...


class KeywordSimulator:
    """Predicts that a token fires when it, or the token before it, matches a trigger quoted in
    the explanation's text (``parse_triggers``). ``vocab``: the visible text of every token id
    (``vocab_strings``)."""

    def __init__(self, vocab: list[str]):
        self.vocab = [_norm(v) for v in vocab]

    def _ids(self, triggers: set[str]) -> Tensor:
        hit = torch.zeros(len(self.vocab), dtype=torch.bool)
        for i, v in enumerate(self.vocab):
            if v in triggers:
                hit[i] = True
        return hit

    def predict(self, explanation: Explanation, tokens: Tensor) -> Tensor:
        """tokens [n, L] -> [n, L] bool: predicted firing (the first token of a context has no
        previous token inside it, so only current-token triggers apply there)."""
        now, before = parse_triggers(explanation.text)
        pred = self._ids(now)[tokens]
        if before:
            after = self._ids(before)[tokens[:, :-1]]
            pred[:, 1:] |= after
        return pred


def vocab_strings(model) -> list[str]:
    """Every token id's visible text (``dashboard.decode_token``: newline as ↵)."""
    from .dashboard import decode_token
    return [decode_token(model, i) for i in range(model.cfg.d_vocab)]


# --- scores --------------------------------------------------------------------------------------
def balanced_accuracy(pred: Tensor, truth: Tensor) -> float:
    """(true-positive rate + true-negative rate) / 2 of bool tensors of one shape; 0.5 is chance
    whatever the class balance. NaN when one class is absent."""
    pred, truth = pred.bool().flatten(), truth.bool().flatten()
    if truth.all() or not truth.any():
        return float("nan")
    return 0.5 * (float(pred[truth].float().mean()) + float((~pred[~truth]).float().mean()))


def detection_score(pred: Tensor, acts: Tensor) -> float:
    """Detection (Paulo et al. 2024): pred [n, L] bool per token, acts [n, L]. A context counts as
    firing if the latent is > 0 on any of its tokens, and as predicted if the simulator marks any
    token; the score is the balanced accuracy over contexts."""
    if pred.shape != acts.shape or pred.ndim != 2:
        raise ValueError(f"pred {tuple(pred.shape)} and acts {tuple(acts.shape)} must both be "
                         "[n_contexts, length].")
    return balanced_accuracy(pred.bool().any(1), (acts > 0).any(1))


def fuzzing_score(pred: Tensor, acts: Tensor) -> float:
    """Token-level variant: balanced accuracy of pred [n, L] against firing (acts > 0), over the
    tokens of the firing contexts only (which tokens fire, given that some do)."""
    firing = (acts > 0).any(1)
    return balanced_accuracy(pred[firing], acts[firing] > 0)


class LatentScore(NamedTuple):
    explanation: Explanation
    detection: float
    fuzzing: float
    n_firing_contexts: int


def top_examples(ctx: Contexts, vocab: list[str], n_top: int = 12,
                 n_random: int = 4, seed: int = 0) -> list[Example]:
    """What an explainer sees: the ``n_top`` contexts with the highest activation and
    ``n_random`` firing contexts drawn at random (as dashboards show quantile samples)."""
    peak = ctx.acts.max(1).values
    firing = (peak > 0).nonzero().squeeze(1)
    if len(firing) == 0:
        return []
    top = firing[peak[firing].argsort(descending=True)[:n_top]]
    rest = firing[~torch.isin(firing, top)]
    gen = torch.Generator().manual_seed(seed)
    extra = rest[torch.randperm(len(rest), generator=gen)[:n_random]]
    return [Example([vocab[int(t)] for t in ctx.tokens[i]], ctx.acts[i].tolist())
            for i in torch.cat([top, extra]).tolist()]


def balanced_contexts(ctx: Contexts, n: int, seed: int = 0) -> Contexts:
    """Up to ``n`` firing and as many non-firing contexts drawn at random (the scoring set)."""
    gen = torch.Generator().manual_seed(seed)
    fires = (ctx.acts > 0).any(1)
    pos, neg = fires.nonzero().squeeze(1), (~fires).nonzero().squeeze(1)
    m = min(n, len(pos), len(neg))
    pick = torch.cat([pos[torch.randperm(len(pos), generator=gen)[:m]],
                      neg[torch.randperm(len(neg), generator=gen)[:m]]])
    return Contexts(ctx.tokens[pick], ctx.acts[pick])


def score_latent(explainer: Explainer, simulator: Simulator, explain_set: Contexts,
                 score_set: Contexts, vocab: list[str], n_score: int = 50,
                 seed: int = 0) -> LatentScore:
    """Explain a latent from ``explain_set`` (contexts of one text) and score the explanation on
    ``score_set`` (contexts of other text): detection and fuzzing on up to ``n_score`` firing and
    as many non-firing contexts."""
    explanation = explainer.explain(top_examples(explain_set, vocab, seed=seed))
    held = balanced_contexts(score_set, n_score, seed)
    n_fire = len(held.tokens) // 2
    if n_fire == 0:
        return LatentScore(explanation, float("nan"), float("nan"), 0)
    pred = simulator.predict(explanation, held.tokens)
    return LatentScore(explanation, detection_score(pred, held.acts),
                       fuzzing_score(pred, held.acts), n_fire)


def sample_alive(density: Tensor, n: int, min_density: float = 1e-4, seed: int = 0) -> Tensor:
    """Up to ``n`` latents drawn at random (seeded) among those with density >= ``min_density``
    (rarer ones fire too seldom in a few thousand contexts to be explained or scored), sorted."""
    alive = (density >= min_density).nonzero().squeeze(1)
    pick = torch.randperm(len(alive), generator=torch.Generator().manual_seed(seed))[:n]
    return alive[pick].sort().values


def score_codes(explain_codes: Tensor, explain_tokens: Tensor, score_codes_: Tensor,
                score_tokens: Tensor, vocab: list[str], explainer: Explainer | None = None,
                simulator: Simulator | None = None, length: int = 16, n_score: int = 50,
                min_contexts: int = 5) -> list[LatentScore]:
    """Explain and score each column of ``explain_codes`` [n_e·(ctx-1), m] (activations on the
    windows ``explain_tokens`` [n_e, ctx], BOS dropped) against ``score_codes_`` on
    ``score_tokens`` (other text). A column that fires in fewer than ``min_contexts`` scoring
    contexts gets NaN scores (too few examples to say anything). Defaults: ``TokenExplainer`` and
    ``KeywordSimulator``. Works for SAE latents (``latent_codes``) and controls
    (``random_direction_codes``) alike."""
    explainer = explainer or TokenExplainer()
    simulator = simulator or KeywordSimulator(vocab)
    n_e, n_s = explain_tokens.shape[0], score_tokens.shape[0]
    e = explain_codes.reshape(n_e, -1, explain_codes.shape[-1])
    s = score_codes_.reshape(n_s, -1, score_codes_.shape[-1])
    out = []
    for j in range(explain_codes.shape[-1]):
        ex_ctx = cut_contexts(explain_tokens, e[..., j], length)
        sc_ctx = cut_contexts(score_tokens, s[..., j], length)
        if not (ex_ctx.acts > 0).any():
            out.append(LatentScore(Explanation("never fires on the explanation text"),
                                   float("nan"), float("nan"), 0))
            continue
        result = score_latent(explainer, simulator, ex_ctx, sc_ctx, vocab, n_score, seed=j)
        if result.n_firing_contexts < min_contexts:
            result = result._replace(detection=float("nan"), fuzzing=float("nan"))
        out.append(result)
    return out


# --- a real LLM (opt-in) -------------------------------------------------------------------------
class LLMClient(Protocol):
    def complete(self, prompt: str) -> str: ...


def _format_example(ex: Example) -> str:
    return "".join(f"<<{t}>>" if a > 0 else t for t, a in zip(ex.tokens, ex.acts))


class LLMExplainer:
    """Asks an LLM (any ``client.complete(prompt) -> str``) for an explanation of the examples,
    firing tokens marked <<like this>>, in the quoted-token format ``KeywordSimulator`` reads."""

    PROMPT = ("We study a neuron in a language model trained on Shakespeare. Below are text "
              "excerpts; tokens where the neuron fires are marked <<like this>>.\n\n{examples}\n\n"
              "In one line, say what the neuron fires on. Quote the tokens it fires on in double "
              "quotes; if it fires on the token *after* something, write a clause starting with "
              "'after' and quote that, e.g.: fires on \"thou\", \"thee\"; after \"[\"")

    def __init__(self, client: LLMClient):
        self.client = client

    def explain(self, examples: list[Example]) -> Explanation:
        if not examples:
            raise ValueError("No examples to explain.")
        text = self.client.complete(self.PROMPT.format(
            examples="\n".join(f"{i + 1}. {_format_example(e)}" for i, e in enumerate(examples))))
        return Explanation(text.strip().splitlines()[0] if text.strip() else "")


class LLMSimulator:
    """Asks an LLM which tokens of each context fire, given the explanation (one call per
    context). ``vocab``: visible text of every token id."""

    PROMPT = ("A neuron in a language model is explained as: {explanation}\n\nHere are the tokens "
              "of a text excerpt, numbered:\n{tokens}\n\nReply with the numbers of the tokens on "
              "which the neuron fires, separated by commas, or 'none'.")

    def __init__(self, client: LLMClient, vocab: list[str]):
        self.client, self.vocab = client, vocab

    def predict(self, explanation: Explanation, tokens: Tensor) -> Tensor:
        pred = torch.zeros(tokens.shape, dtype=torch.bool)
        for r in range(tokens.shape[0]):
            listing = "\n".join(f"{i}: {json.dumps(self.vocab[int(t)], ensure_ascii=False)}"
                                for i, t in enumerate(tokens[r]))
            reply = self.client.complete(self.PROMPT.format(explanation=explanation.text,
                                                            tokens=listing))
            for num in re.findall(r"\d+", reply):
                if int(num) < tokens.shape[1]:
                    pred[r, int(num)] = True
        return pred


class _HTTPClient:
    """Shared opt-in checks: a key from the environment, ``allow_network=True``, not offline."""

    key_env = ""

    def __init__(self, model: str, *, allow_network: bool = False, api_key_env: str | None = None,
                 timeout: float = 60.0):
        self.key_env = api_key_env or self.key_env
        if not allow_network:
            raise PermissionError(f"{type(self).__name__} sends your examples to a web API. Pass "
                                  "allow_network=True to opt in (the course never does).")
        if offline():
            raise PermissionError("SAE_MINIMAL_OFFLINE=1: no web API calls. Use TokenExplainer "
                                  "and KeywordSimulator instead.")
        self.api_key = os.environ.get(self.key_env)
        if not self.api_key:
            raise PermissionError(f"Set the environment variable {self.key_env} to your API key "
                                  "(it is read from the environment only, never stored).")
        self.model, self.timeout = model, timeout

    def _post(self, url: str, headers: dict, body: dict) -> dict:
        req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", **headers})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:   # noqa: S310 (https only)
            return json.loads(r.read())


class AnthropicClient(_HTTPClient):
    """Claude through the Messages API; key from ``ANTHROPIC_API_KEY``."""

    key_env = "ANTHROPIC_API_KEY"

    def complete(self, prompt: str) -> str:
        out = self._post("https://api.anthropic.com/v1/messages",
                         {"x-api-key": self.api_key, "anthropic-version": "2023-06-01"},
                         {"model": self.model, "max_tokens": 200,
                          "messages": [{"role": "user", "content": prompt}]})
        return "".join(part.get("text", "") for part in out.get("content", []))


class OpenAIClient(_HTTPClient):
    """Any OpenAI-compatible chat-completions endpoint; key from ``OPENAI_API_KEY``."""

    key_env = "OPENAI_API_KEY"

    def __init__(self, model: str, *, base_url: str = "https://api.openai.com/v1", **kw):
        super().__init__(model, **kw)
        self.base_url = base_url.rstrip("/")

    def complete(self, prompt: str) -> str:
        out = self._post(f"{self.base_url}/chat/completions",
                         {"authorization": f"Bearer {self.api_key}"},
                         {"model": self.model, "max_tokens": 200,
                          "messages": [{"role": "user", "content": prompt}]})
        return out["choices"][0]["message"]["content"]


__all__ = ["Contexts", "cut_contexts", "latent_codes", "random_direction_codes", "Explanation",
           "explanation_text", "parse_triggers", "Example", "Explainer", "TokenExplainer",
           "Simulator", "KeywordSimulator", "vocab_strings", "balanced_accuracy",
           "detection_score", "fuzzing_score", "LatentScore", "top_examples", "balanced_contexts",
           "score_latent", "sample_alive", "score_codes", "LLMClient", "LLMExplainer",
           "LLMSimulator", "AnthropicClient",
           "OpenAIClient"]
