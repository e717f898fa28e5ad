"""Steering and ablation with SAE latents, each measured against a control.

Steering (Templeton et al. 2024, "Scaling Monosemanticity"; Turner et al. 2023, activation
addition): add α·d_i, a latent's decoder direction, to the residual stream at one layer on every
position while the model runs:

    x_t  <-  x_t + α d_i                                                  (``add_direction``)

Ablation through the SAE, keeping its error term: with x = x̂(f) + ε and
x̂(f) = Σ_j f_j d_j + b_dec, zeroing latent i changes x by exactly -f_i(x)·d_i, so

    x  <-  x - f_i(x) d_i                                                  (``ablate_latent``)

removes what latent i contributes and nothing else; the SAE's reconstruction error stays in. The
control moves x by the same amount in a random direction: x - f_i(x)·||d_i||·r with r a random unit
vector (``ablation_effect``).

Choosing what to steer with, and controls that are not SAE latents (notebook 05): a concept is
defined from the text (``concept_tokens``, ``concept_context``), a latent is chosen by how well its
firing separates where the concept holds (``firing_f1``: its input side, not its decoder), and it
is compared with the mean-difference direction (``mean_difference``) and the concept tokens' mean
unembedding (``unembedding_direction``), scaled to the same direct logit effect on the concept
tokens (``direct_logit_effect``).

Shapes: tokens [n, pos] with BOS first; activations [n, pos, d_in]; directions [d_in]. An ``sae``
may be one of ours or a SAELens SAE object (``io.as_sae`` translates it).
"""

from __future__ import annotations

import zlib
from functools import partial

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .activations import run_from_hook, run_to_hook
from .evaluation import per_token_ce
from ..io import as_sae
from ..metrics import f1_from_counts
from .validate import (check_finite, check_hook, check_latent, check_latents, check_token_ids,
                       check_tokens, check_width, to_model_device)


# The controls draw from a stream of their own. With ``manual_seed(seed)`` the control for seed s
# was exactly row 0 of the initial W_dec of ``BaseSAE(d, ..., seed=s)`` (the same randn stream,
# normalised the same way): a "random" direction the SAE started from. The CPU generator keeps
# only the low 32 bits of a seed, so an offset above 2**32 would change nothing; instead each
# control seed maps to a generator seed in [2**31, 2**32), a range the package's SAEs, data and
# notebooks never seed with (they use small integers), scrambled by a multiplicative hash.
_CONTROL_STREAM = zlib.crc32(b"sae_minimal.lm.steering.random_direction")


def _control_seed(seed: int) -> int:
    return 2**31 + (_CONTROL_STREAM + seed * 0x9E3779B1) % 2**31


def random_direction(d: int, seed: int = 0, norm: float = 1.0) -> Tensor:
    """[d] a uniformly random direction with the given norm (the matched-norm control), drawn
    from its own random stream (``_control_seed(seed)``), never an SAE's initial decoder row."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}.")
    v = torch.randn(d, generator=torch.Generator().manual_seed(_control_seed(seed)))
    return norm * v / v.norm()


def add_direction(act: Tensor, hook=None, *, direction: Tensor, alpha: float,
                  first: int = 1) -> Tensor:
    """Hook: act [n, pos, d] + α·direction at positions ``first`` onwards: by default every
    position except BOS (position 0), which SAEs never see. (``generate``'s cached steps pass
    first=0: their one position is a new token, never BOS.)"""
    check_width(act.shape[-1], direction.shape[-1], getattr(hook, "name", "the hook"),
                what="The steering direction")
    act = act.clone()
    act[:, first:] += alpha * direction.to(device=act.device, dtype=act.dtype)
    return act


def _hooks(model, hook_name: str | None, direction: Tensor | None, alpha: float,
           first: int = 1) -> list:
    """The forward hooks that steer (none when there is nothing to add), after checking that
    α is finite and the direction is one finite vector [d]."""
    alpha = check_finite(alpha, "alpha")
    if hook_name is None or direction is None or alpha == 0:
        return []
    check_hook(model, hook_name)
    if not isinstance(direction, Tensor) or direction.ndim != 1:
        got = tuple(direction.shape) if isinstance(direction, Tensor) else repr(direction)
        raise ValueError(f"direction must be one vector [d] (e.g. sae.W_dec[latent]), got {got}.")
    if not torch.isfinite(direction).all():
        raise ValueError("direction contains NaN/inf values: steering with it would make every "
                         "logit NaN. Check how it was computed (e.g. normalising a zero vector).")
    return [(hook_name, partial(add_direction, direction=direction, alpha=alpha, first=first))]


@torch.no_grad()
def generate(model, prompts: Tensor, n_new: int, *, hook_name: str | None = None,
             direction: Tensor | None = None, alpha: float = 0.0, temperature: float = 1.0,
             seed: int = 0, kv_cache: bool = True) -> Tensor:
    """[n, p + n_new] sampled continuations of ``prompts`` [n, p] while adding α·direction at
    ``hook_name``.

    The sampling noise comes from ``seed`` alone, so runs that differ only in α or direction draw
    the same random numbers (common random numbers: differences between them are the steering's,
    not the sampler's). With ``kv_cache`` (transformer-lens's key-value cache) the first pass runs
    the prompts and every later one only the newest token, attending to the cached keys and
    values; without it, the whole context re-runs at every step. Both sample the same tokens
    (tests/test_lab_steering.py), the cache 4-6x sooner on 05's prompts: the steering hook adds
    α·direction to the prompts' positions but BOS in the first pass and to each new token after.
    """
    tokens = to_model_device(model, check_tokens(model, prompts, name="prompts"))
    if tokens.shape[1] + n_new > model.cfg.n_ctx:
        raise ValueError(f"{tokens.shape[1]} prompt tokens + n_new={n_new} exceed the model's "
                         f"context n_ctx={model.cfg.n_ctx}: shorten the prompts or ask for at most "
                         f"{model.cfg.n_ctx - tokens.shape[1]} new tokens.")
    if not check_finite(temperature, "temperature") > 0:
        raise ValueError(f"temperature must be > 0, got {temperature} "
                         "(use a small value for near-greedy).")
    gen = torch.Generator().manual_seed(seed)
    hooks = _hooks(model, hook_name, direction, alpha)
    cache = _key_value_cache(model, tokens.shape[0]) if kv_cache else None
    # after the first cached pass the one position is a new token, never BOS: steer it too
    later = _hooks(model, hook_name, direction, alpha, first=0) if cache is not None else hooks
    step_in = tokens
    for step in range(n_new):
        if cache is None:
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        else:
            logits = model.run_with_hooks(step_in, fwd_hooks=hooks if step == 0 else later,
                                          past_kv_cache=cache)
        # sample on the CPU: one generator on every device
        probs = (logits[:, -1].float() / temperature).softmax(-1).cpu()
        step_in = torch.multinomial(probs, 1, generator=gen).to(device=tokens.device,
                                                                dtype=tokens.dtype)
        tokens = torch.cat([tokens, step_in], dim=1)
    return tokens.to(prompts.device)


def _key_value_cache(model, batch: int):
    """An empty transformer-lens key-value cache for ``batch`` sequences, or None where this
    transformer-lens has none (then ``generate`` re-runs the context)."""
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as Cache
    except ImportError:
        try:
            from transformer_lens.past_key_value_caching import (
                HookedTransformerKeyValueCache as Cache)
        except ImportError:
            return None
    return Cache.init_cache(model.cfg, model.cfg.device, batch)


@torch.no_grad()
def concept_logprob(model, tokens: Tensor, concept_ids: Tensor, *, hook_name: str | None = None,
                    direction: Tensor | None = None, alpha: float = 0.0) -> Tensor:
    """[n] per sequence, the mean over positions of log P(next token ∈ concept_ids) while
    steering."""
    concept_ids = _checked_concept(model, concept_ids)
    logp = _next_token_logp(model, tokens, hook_name, direction, alpha)
    return _concept_logp(logp, concept_ids).mean(-1)


def _checked_concept(model, concept_ids) -> Tensor:
    """``concept_ids`` as a tensor of token ids the model's vocabulary has (else a clear error)."""
    concept_ids = torch.as_tensor(concept_ids)
    check_token_ids(concept_ids.reshape(1, -1), model.cfg.d_vocab_out, name="concept_ids")
    return concept_ids


def _concept_logp(logp: Tensor, concept_ids: Tensor) -> Tensor:
    """logp [..., vocab] next-token log-probabilities -> [...]: log P(next token ∈ concept_ids)."""
    return logp[..., concept_ids.to(logp.device)].logsumexp(-1)


def _next_token_logp(model, tokens: Tensor, hook_name, direction, alpha) -> Tensor:
    """[n, L-1, vocab] next-token log-probabilities while steering (the prediction made at BOS
    left out)."""
    tokens = to_model_device(model, check_tokens(model, tokens))
    hooks = _hooks(model, hook_name, direction, alpha)
    return model.run_with_hooks(tokens, fwd_hooks=hooks)[:, 1:].float().log_softmax(-1)


@torch.no_grad()
def next_token_entropy(model, tokens: Tensor, *, hook_name: str | None = None,
                       direction: Tensor | None = None, alpha: float = 0.0) -> Tensor:
    """[n] per sequence, the mean over positions of the entropy (nats) of the next-token
    distribution while steering: how flat a push leaves the prediction. A flatter distribution
    gives every rare token more probability, so a rare concept's log-probability can rise under
    any large push; this says whether it did."""
    logp = _next_token_logp(model, tokens, hook_name, direction, alpha)
    return -(logp.exp() * logp).sum(-1).mean(-1)


def contains_any(tokens: Tensor, ids: Tensor) -> Tensor:
    """[n] bool: does each row of tokens [n, L] contain any of ``ids``?"""
    return torch.isin(tokens, ids).any(-1)


@torch.no_grad()
def continuation_loss(model, tokens: Tensor, start: int) -> Tensor:
    """[n] mean cross-entropy (nats/token) the *unsteered* model assigns to tokens[:, start:]: a
    fluency score."""
    tokens = to_model_device(model, check_tokens(model, tokens))
    if not 1 <= start < tokens.shape[1]:
        raise ValueError(f"start must be in [1, {tokens.shape[1]}) (the first position of the "
                         f"continuation in tokens of length {tokens.shape[1]}), got {start}.")
    return per_token_ce(model(tokens), tokens)[:, start - 1:].mean(-1)


def word_tokens(tokenizer, vocab_size: int, min_letters: int = 3) -> Tensor:
    """[vocab] bool: tokens that decode to a space and a word of at least ``min_letters`` letters
    (" crown", not the suffix "ment"): the tokens a reader can recognise as a concept in generated
    text."""
    def is_word(text: str) -> bool:
        return text.startswith(" ") and text[1:].isalpha() and len(text) > min_letters
    return torch.tensor([is_word(tokenizer.decode([i])) for i in range(vocab_size)])


@torch.no_grad()
def logit_effect_z(model, sae, latents: Tensor | list[int]) -> Tensor:
    """[n, vocab] each latent's direct effect on the logits, d_i W_U, standardised per latent
    (z-scores over the vocabulary). The direct path skips the layers after the hook, so it is a
    guide for choosing, not a measurement."""
    sae = as_sae(sae)
    ids = check_latents(latents, sae.d_sae).to(sae.W_dec.device)
    effects = sae.W_dec[ids] @ model.W_U.to(sae.W_dec.device)
    return (effects - effects.mean(-1, keepdim=True)) / effects.std(-1, keepdim=True)


# --- choosing a latent from its input side, and directions that are not SAE latents -------------
def concept_tokens(tokenizer, vocab_size: int, words: set[str] | list[str]) -> Tensor:
    """[m] ids of every vocabulary token that decodes to one of ``words`` up to case and
    surrounding whitespace (" thou", "Thou", "thou"): a concept defined by the text alone,
    before any SAE or logit is looked at."""
    wanted = {w.strip().lower() for w in words}
    ids = [i for i in range(vocab_size) if tokenizer.decode([i]).strip().lower() in wanted]
    if not ids:
        raise ValueError(f"No token of the vocabulary decodes to any of {sorted(wanted)}: check "
                         "the spelling, or pick words the tokenizer keeps whole.")
    return torch.tensor(ids)


def concept_context(tokens: Tensor, ids: Tensor, window: int) -> Tensor:
    """[n, L] bool: position t is "in the concept's context" when one of ``ids`` occurs among
    tokens[:, t-window+1 .. t] (the current token and the window-1 before it). Labels come from
    the text alone, so a latent chosen to match them is chosen from its input side."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer (tokens looked back), got {window!r}.")
    hit = torch.isin(tokens, torch.as_tensor(ids, device=tokens.device))
    out = torch.zeros_like(hit)
    for lag in range(min(window, tokens.shape[1])):
        out[:, lag:] |= hit[:, :tokens.shape[1] - lag]
    return out


def firing_f1(fires: Tensor, holds: Tensor) -> dict[str, Tensor]:
    """How well each latent's firing separates positions where a concept holds: fires [N, d_sae]
    bool, holds [N] bool -> "precision" P(holds | fires), "recall" P(fires | holds) and their
    harmonic mean "f1", each [d_sae] (0 for a latent that never fires)."""
    if fires.ndim != 2 or holds.shape != fires.shape[:1]:
        raise ValueError(f"fires must be [N, d_sae] and holds [N], got {tuple(fires.shape)} and "
                         f"{tuple(holds.shape)}.")
    if not holds.any():
        raise ValueError("The concept holds at no position: there is nothing to separate.")
    fires, holds = fires.bool(), holds.bool()
    tp, n_fires = (fires & holds[:, None]).sum(0).float(), fires.sum(0)
    precision = tp / n_fires.clamp(min=1)
    recall = tp / holds.sum()
    f1 = f1_from_counts(tp, n_fires, holds.sum())
    return {"precision": precision, "recall": recall, "f1": f1}


def mean_difference(x: Tensor, holds: Tensor) -> Tensor:
    """[d] the mean-difference ("diff-in-means") direction: mean of x [N, d] where the concept
    holds minus the mean where it does not (unnormalised). A linear probe's direction with no
    SAE involved, the standard non-SAE steering vector (e.g. Marks & Tegmark 2023)."""
    holds = torch.as_tensor(holds, dtype=torch.bool, device=x.device)
    if x.ndim != 2 or holds.shape != x.shape[:1]:
        raise ValueError(f"x must be [N, d] and holds [N], got {tuple(x.shape)} and "
                         f"{tuple(holds.shape)}.")
    if holds.all() or not holds.any():
        raise ValueError("holds must be True at some rows and False at others "
                         f"({int(holds.sum())} of {len(holds)} are True).")
    return x[holds].mean(0) - x[~holds].mean(0)


@torch.no_grad()
def unembedding_direction(model, ids: Tensor) -> Tensor:
    """[d_model] the mean unembedding of the concept tokens, minus the mean over the vocabulary:
    the direction that raises their logits most per unit norm on the direct path. It is read off
    the output weights, not found in any activation."""
    ids = torch.as_tensor(ids)
    check_token_ids(ids.reshape(1, -1), model.cfg.d_vocab_out, name="ids")
    W_U = model.W_U.detach().float()
    return W_U[:, ids.to(W_U.device)].mean(1) - W_U.mean(1)


@torch.no_grad()
def direct_logit_effect(model, direction: Tensor, ids: Tensor) -> float | Tensor:
    """How much adding ``direction`` [d_model] raises the concept tokens' logits on the direct path
    (d W_U), averaged over ``ids``, minus its average over the vocabulary (softmax ignores a
    shift shared by every logit). The final LayerNorm's scaling is ignored, so compare directions
    with it, do not read it as nats. Several directions [n, d_model] (e.g. every decoder row)
    give a [n] tensor, one effect each."""
    ids = torch.as_tensor(ids)
    check_token_ids(ids.reshape(1, -1), model.cfg.d_vocab_out, name="ids")
    W_U = model.W_U.detach().float()
    direction = torch.as_tensor(direction)
    if direction.ndim not in (1, 2) or direction.shape[-1] != W_U.shape[0]:
        raise ValueError(f"direction must be [d_model] or [n, d_model] with d_model = {W_U.shape[0]}, "
                         f"got shape {tuple(direction.shape)}.")
    effect = direction.detach().float().to(W_U.device) @ W_U              # [(n,) vocab]
    effect = effect[..., ids.to(W_U.device)].mean(-1) - effect.mean(-1)
    return float(effect) if direction.ndim == 1 else effect


def ablate_latent(x: Tensor, sae, latent: int) -> Tensor:
    """x [..., d_in] with latent ``latent``'s contribution removed, keeping the SAE's error term:
    x - f_i(x)·d_i (module docstring)."""
    sae = as_sae(sae)
    latent = check_latent(latent, sae.d_sae)
    f = sae.encode(x)[..., latent]
    return x - f[..., None] * sae.W_dec[latent]


@torch.no_grad()
def _cofiring_part(sae, acts: Tensor, f: Tensor, latent: int, score: Tensor | None = None,
                   pick: str = "closest") -> tuple[Tensor, Tensor, Tensor]:
    """Given the SAE's codes ``acts`` [b, pos, d_sae]: at every position where ``f`` (latent's
    activation, [b, pos]) is > 0, another latent j that
    fires there, by its f_j·score_j (score [d_sae], or [b, pos, d_sae] one per position; default
    ||d_j||, the contribution's norm): the one closest to the latent's own f_i·score_i
    (``pick="closest"``), the largest (``"largest"``), or the largest taken only in part
    (``"scaled"``: c = f_j·clamp(f_i·score_i / f_j·score_j, 0, 1), so that c·score_j equals the
    latent's f_i·score_i wherever f_j·score_j is at least that; nothing where the latent's own is
    not positive). Returns (c·d_j [b, pos, d_in], j [b, pos], c [b, pos]), c = f_j unless scaled;
    zero / -1 / 0 where the latent fires alone or not at all."""
    score = (sae.W_dec.norm(dim=-1) if score is None else score).to(acts.device, acts.dtype)
    value = acts * score                                                  # f_j·score_j
    own = f * score[..., latent]                                          # f_i·score_i [b, pos]
    cost = -value if pick in ("largest", "scaled") else (value - own[..., None]).abs()
    cost[acts <= 0] = float("inf")                                        # only latents that fire
    cost[..., latent] = float("inf")                                      # and not the latent itself
    best, j = cost.min(-1)                                                # [b, pos] smallest cost wins
    ok = (f > 0) & torch.isfinite(best)
    coef = acts.gather(-1, j[..., None]).squeeze(-1) * ok                 # [b, pos] f_j
    if pick == "scaled":                                                  # remove only the latent's push
        top = value.gather(-1, j[..., None]).squeeze(-1)
        coef = coef * torch.where(top > 0, (own / top.clamp_min(1e-12)).clamp(0, 1), 1.0)
    return (coef[..., None] * sae.W_dec[j].to(acts.device, acts.dtype), torch.where(ok, j, -1), coef)


@torch.no_grad()
def ablation_effect(model, sae, hook_name: str, tokens: Tensor, latent: int, *, seed: int = 0,
                    clean_ce: Tensor | None = None, batch_size: int = 32,
                    controls: dict[str, Tensor] | None = None,
                    cofiring: bool = False, cofiring_score: Tensor | None = None,
                    cofiring_pick: str = "closest", concept_ids: Tensor | None = None,
                    match_norm: bool = True) -> dict[str, Tensor]:
    """Loss change from removing latent ``latent`` vs. a matched-norm random direction, on the
    tokens where it fires.

    At every position t where f_i > 0 the residual at ``hook_name`` is moved by -f_i·d_i (ablation)
    or by -f_i·||d_i||·r (control; one random unit r per latent, from ``seed``); nothing else
    changes. Returns per firing position: "ablation" and "control" [m] =
    CE(predicting token t+1) - clean CE, and "activation" [m] = f_i. ``clean_ce`` [n, pos-1] can be
    passed in to reuse the clean pass across latents. ``controls``: more control directions
    {name: [d_in]}, each rescaled to ||d_i|| (``match_norm=False``: used at the length given, e.g.
    matched to the latent's direct logit effect instead) and moved along like the random one,
    returned under its name: a random direction mostly points where the data has little
    variance, so another latent's decoder row (a direction the model does use) is the harder
    control. But moving along another latent's row where that latent does not fire gives it a
    negative coefficient, an edit the model never sees; ``cofiring=True`` adds "co-firing" [m],
    an on-distribution control: at each position another latent that fires there, the one whose
    f_j·||d_j|| is closest to f_i·||d_i||, removed whole (-f_j·d_j), the same kind of edit as the
    ablation; "co-firing latent" [m] says which (-1 where the latent fires alone) and "co-firing
    coefficient" [m] how much of it was removed (f_j). ``cofiring_score`` [d_sae] (or
    [n, pos, d_sae]: a score per position of ``tokens``, e.g. a first-order effect) adds a co-firing
    control matched on something other than size, "scored co-firing" (with its "... latent" and
    "... coefficient"): at each position the other firing latent whose f_j·score_j is closest to
    the latent's f_i·score_i, removed whole; ``cofiring_pick="largest"``: the one with the largest
    f_j·score_j, removed whole; ``"scaled"``: that one, but only the part c·d_j whose c·score_j
    equals f_i·score_i (all of it where it scores less). With score = each row's direct logit
    effect on a concept (``direct_logit_effect(model, sae.W_dec, ids)``) these are a co-firing
    latent that pushes the concept about as hard as the latent, the one that pushes hardest, and
    that one cut down to the latent's push: is the latent special for its concept, or is any
    active latent that writes it?

    ``concept_ids`` [c] (token ids) asks what a label claims rather than what the loss says: every
    value is then the change in the concept loss -log P(next token ∈ concept_ids) at t instead of
    the CE of the actual token t+1; positive when the edit makes the concept less likely. (Its
    clean value is computed here: ``clean_ce`` holds the other score.)
    """
    sae = as_sae(sae)
    latent = check_latent(latent, sae.d_sae)
    check_hook(model, hook_name)
    tokens = to_model_device(model, check_tokens(model, tokens))
    if concept_ids is not None:
        concept_ids = _checked_concept(model, concept_ids).reshape(-1)
        if clean_ce is not None:
            raise ValueError("clean_ce holds the clean next-token CE, but with concept_ids every "
                             "value is a change in the concept loss: leave clean_ce out (the clean "
                             "concept loss is computed here).")
    score = partial(_concept_loss, concept_ids=concept_ids) if concept_ids is not None else per_token_ce
    norm = float(sae.W_dec[latent].norm())
    moves = {"ablation": sae.W_dec[latent],
             "control": random_direction(sae.d_in, seed=seed + latent, norm=norm).to(sae.W_dec.device)}
    for name, v in (controls or {}).items():
        if name in moves:
            raise ValueError(f"controls: {name!r} is taken by the built-in outputs; name it otherwise.")
        v = torch.as_tensor(v, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
        if v.shape != (sae.d_in,) or not bool(v.norm() > 0):
            raise ValueError(f"controls[{name!r}] must be a nonzero [d_in] = [{sae.d_in}] direction, "
                             f"got shape {tuple(v.shape)}.")
        moves[name] = v * (norm / v.norm()) if match_norm else v
    if cofiring_score is not None:
        cofiring_score = torch.as_tensor(cofiring_score)
        per_position = (*tokens.shape, sae.d_sae)
        if (cofiring_score.shape not in ((sae.d_sae,), per_position)
                or not cofiring_score.is_floating_point()):
            raise ValueError(f"cofiring_score must be a float score per latent, [d_sae] = [{sae.d_sae}] "
                             "(e.g. direct_logit_effect(model, sae.W_dec, ids)), or per position of "
                             f"tokens, {list(per_position)}; got {cofiring_score.dtype} of shape "
                             f"{tuple(cofiring_score.shape)}.")
    if cofiring_pick not in ("closest", "largest", "scaled"):
        raise ValueError(f"cofiring_pick must be 'closest' (f_j·score_j nearest the latent's), "
                         f"'largest' or 'scaled' (the largest, cut to the latent's f_i·score_i), "
                         f"got {cofiring_pick!r}.")
    if clean_ce is not None:
        clean_ce = clean_ce.to(tokens.device)
        if clean_ce.shape != (tokens.shape[0], tokens.shape[1] - 1):
            raise ValueError(f"clean_ce has shape {tuple(clean_ce.shape)}, but these tokens need "
                             f"[{tokens.shape[0]}, {tokens.shape[1] - 1}]: pass "
                             "clean_token_ce(model, tokens) of the same tokens.")
    picked = (["co-firing"] if cofiring else []) + (["scored co-firing"] if cofiring_score is not None else [])
    extra = [f"{key}{part}" for key in picked for part in ("", " latent", " coefficient")]
    out = {**{key: [] for key in moves}, **{key: [] for key in extra}, "activation": []}
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i:i + batch_size]
        x = run_to_hook(model, batch, hook_name)                              # [b, pos, d_in]
        check_width(x.shape[-1], sae.d_in, hook_name)
        f = sae.encode(x.to(sae.W_dec.device))[..., latent].to(x.device)      # [b, pos]
        f[:, 0] = 0                          # never touch BOS
        f[:, -1] = 0                         # the last position predicts nothing we can score
        rows = f.gt(0).any(-1)
        if not rows.any():
            continue
        batch, f = batch[rows], f[rows]
        # the rows that fire, up to the hook (as a batch of their own: the same arithmetic as
        # running them alone with a hook); both edited passes go on from there
        x = run_to_hook(model, batch, hook_name)
        clean = (clean_ce[i:i + batch_size][rows] if clean_ce is not None
                 else score(run_from_hook(model, x, hook_name, batch), batch))
        fires = f[:, :-1] > 0
        deltas = {key: -f[..., None] * vec.to(f.device, f.dtype) for key, vec in moves.items()}
        if picked:          # the codes of these rows, once for every co-firing control
            acts = sae.encode(x.to(sae.W_dec.device)).to(x.device)          # [b, pos, d_sae]
        for key in picked:
            part, j, coef = (_cofiring_part(sae, acts, f, latent) if key == "co-firing" else
                             _cofiring_part(sae, acts, f, latent, _rows_of(cofiring_score, i, batch_size, rows),
                                            cofiring_pick))
            deltas[key] = -part
            out[f"{key} latent"].append(j[:, :-1][fires])
            out[f"{key} coefficient"].append(coef[:, :-1][fires])
        for key, delta in deltas.items():
            edited = _shift(x, delta=delta)
            ce = score(run_from_hook(model, edited, hook_name, batch), batch)
            out[key].append((ce - clean)[fires])
        out["activation"].append(f[:, :-1][fires])
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in out.items()}


def _rows_of(score: Tensor, start: int, batch_size: int, rows: Tensor) -> Tensor:
    """A per-latent score [d_sae] as it is; a per-position one [n, pos, d_sae] cut to this batch's
    rows that fire."""
    return score if score.ndim == 1 else score[start:start + batch_size][rows.to(score.device)]


def _concept_loss(logits: Tensor, tokens: Tensor, *, concept_ids: Tensor) -> Tensor:
    """logits [n, pos, vocab] -> [n, pos-1]: -log P(next token ∈ concept_ids) at each position
    (``tokens`` is unused: the score does not depend on which token came)."""
    return -_concept_logp(logits[:, :-1].float().log_softmax(-1), concept_ids)


def _shift(act: Tensor, hook=None, *, delta: Tensor) -> Tensor:
    return act + delta.to(device=act.device, dtype=act.dtype)


@torch.no_grad()
def clean_token_ce(model, tokens: Tensor, batch_size: int = 32, progress: bool = False) -> Tensor:
    """[n, pos-1] per-token clean cross-entropy, for reuse across ``ablation_effect`` calls."""
    tokens = to_model_device(model, check_tokens(model, tokens))
    return torch.cat([per_token_ce(model(tokens[i:i + batch_size]), tokens[i:i + batch_size])
                      for i in tqdm(range(0, len(tokens), batch_size), disable=not progress,
                                    desc="clean pass")])


__all__ = ["word_tokens", "logit_effect_z", "random_direction", "add_direction", "generate",
           "concept_logprob", "contains_any", "continuation_loss", "concept_tokens",
           "concept_context", "firing_f1", "mean_difference", "unembedding_direction",
           "direct_logit_effect",
           "ablate_latent", "ablation_effect", "clean_token_ce", "next_token_entropy"]
