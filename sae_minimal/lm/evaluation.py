"""Evaluate an SAE with the model in the loop (the chapter's "downstream loss preservation").

Splice the SAE's reconstruction into the forward pass at its hook and compare next-token
cross-entropy:

    CE_clean    the unmodified model
    CE_spliced  activation x replaced by the SAE's x̂ (all positions but BOS)
    CE_zero     x replaced by 0            (zero-ablation: the layer's information removed)
    CE_mean     x replaced by its mean     (mean-ablation: a gentler baseline)

    CE loss recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)
                                                        1 = perfect, 0 = as bad as zeroing

plus KL(clean || spliced) of the next-token distributions, and FVU / L0 on the same tokens.

**BOS convention.** Position 0 of every window (BOS) is left untouched, as SAEs are trained
without it (see ``sae_minimal.lm.activations``), and the CE averages the predictions made at
positions 1 .. L-2 (the one made at BOS cannot change). SAELens gives the same numbers with
``run_with_saes(tokens, saes=[sae], exclude_special_tokens=[bos_id], return_type="loss",
loss_per_token=True)[:, 1:].mean()``, provided BOS occurs only at position 0 (SAELens skips
every occurrence of the token; we skip the position): tests/test_sae_lens_interop.py checks it.

``sae`` may be one of ours or a SAELens SAE object (``io.as_sae`` translates it).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .activations import run_from_hook, run_to_hook
from ..base import check_activations
from ..io import as_sae
from ..metrics import dead_fraction, fvu, l0, relative_reconstruction_bias
from .validate import (check_hook, check_token_ids, check_tokens, check_width, module_device,
                       to_model_device)


def _replace(act: Tensor, hook, new: Tensor) -> Tensor:
    act = act.clone()
    act[:, 1:] = new[:, 1:].to(act.dtype)   # keep BOS (position 0) as it was
    return act


def _recovered(ce: dict[str, float], baseline: str) -> float:
    """(CE_baseline - CE_spliced) / (CE_baseline - CE_clean). NaN, with a warning, where ablating
    the layer does not raise the loss (e.g. a randomly initialised model): no gap to recover."""
    gap = ce[baseline] - ce["clean"]
    if gap <= 1e-6:
        warnings.warn(f"{baseline}-ablating this layer does not raise the CE loss ({ce[baseline]:.4f} "
                      f"vs {ce['clean']:.4f} nats clean), so CE loss recovered is undefined (NaN). "
                      "Read ce_delta (spliced minus clean) instead.", stacklevel=3)
        return float("nan")
    return (ce[baseline] - ce["spliced"]) / gap


@torch.no_grad()
def ablation_ce(model, hook_name: str, tokens: Tensor, mean_act: Tensor, *,
                batch_size: int = 16, hook_acts: Tensor | None = None) -> dict[str, float]:
    """{"zero": CE_zero, "mean": CE_mean} on ``tokens`` [n, context]: the two baselines of CE loss
    recovered, which do not depend on the SAE. Pass them to ``splice_eval(..., ablation=...)`` to
    evaluate several SAEs on the same tokens without recomputing them (``Lab.evaluate`` does).
    hook_acts: as in ``splice_eval``."""
    tokens = to_model_device(model, check_tokens(model, tokens))
    hook_acts = _check_hook_acts(hook_acts, tokens, hook_name)
    sums, n_tok = {"zero": 0.0, "mean": 0.0}, 0
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i:i + batch_size]
        x = _acts_at_hook(model, batch, hook_name, hook_acts, i)   # [b, pos, d]
        zeros = torch.zeros_like(x)
        for key, new in (("zero", zeros), ("mean", mean_act.to(x).expand_as(x))):
            logits = run_from_hook(model, _replace(x, None, new=new), hook_name, batch)
            sums[key] += float(per_token_ce(logits, batch)[:, 1:].sum())
        n_tok += batch.shape[0] * (batch.shape[1] - 2)
    return {k: v / n_tok for k, v in sums.items()}


@torch.no_grad()
def splice_eval(model, sae, hook_name: str, tokens: Tensor, *, batch_size: int = 16,
                mean_act: Tensor | None = None, progress: bool = True,
                ablation: dict[str, float] | None = None,
                hook_acts: Tensor | None = None) -> dict[str, float]:
    """CE loss clean / spliced / zero-ablated / mean-ablated, CE loss recovered, KL, FVU and L0 on
    ``tokens``.

    tokens: [n, context] with BOS at position 0. mean_act: [d] for mean-ablation (default: the mean
    over these tokens' non-BOS positions). ablation: ``ablation_ce(...)`` of the same tokens,
    mean_act and batch_size, if already known (computed here otherwise). hook_acts: [n, context, d]
    the activations at the hook for these tokens (``run_to_hook``), if already known: the layers
    before the hook then do not run again for every SAE evaluated on the same tokens (a third of
    an evaluation on the stand-in; ``Lab.evaluate`` passes them).
    """
    check_hook(model, hook_name)
    sae = as_sae(sae)
    tokens = to_model_device(model, check_tokens(model, tokens))
    hook_acts = _check_hook_acts(hook_acts, tokens, hook_name)
    # the hook's width, checked before anything is computed: reshaping [b, pos, d] to
    # [-1, sae.d_in] would otherwise succeed whenever d_in divides b·pos·d, with garbage rows
    width = (hook_acts if hook_acts is not None else run_to_hook(model, tokens[:1], hook_name))
    check_width(width.shape[-1], sae.d_in, hook_name)
    if mean_act is None:
        # [n·(context-1), d_in] non-BOS activations, then their mean [d_in]
        mean_act = torch.cat([_acts_at_hook(model, tokens[i:i + batch_size], hook_name,
                                            hook_acts, i)[:, 1:].reshape(-1, sae.d_in)
                              for i in range(0, len(tokens), batch_size)]).mean(0)
    mean_act = _check_mean_act(mean_act, sae.d_in, hook_name)
    if ablation is None:
        ablation = ablation_ce(model, hook_name, tokens, mean_act, batch_size=batch_size,
                               hook_acts=hook_acts)
    sae_device = module_device(sae, tokens.device)
    sums = dict.fromkeys(("clean", "spliced", "kl"), 0.0)
    n_tok, acts_all, recon_all, latents_all = 0, [], [], []
    for i in tqdm(range(0, len(tokens), batch_size), desc="splice eval", disable=not progress):
        batch = tokens[i:i + batch_size]
        # the layers up to the hook run once; the clean and the spliced pass go on from there
        x = _acts_at_hook(model, batch, hook_name, hook_acts, i)
        # x: [b, pos, d_in]; the SAE sees [b·pos, d_in] on its own device
        out = sae(x.reshape(-1, sae.d_in).to(sae_device))
        x_hat = out.x_hat.reshape(x.shape).to(x.device)      # [b, pos, d_in]
        logits_clean = run_from_hook(model, x, hook_name, batch)
        logits_spliced = run_from_hook(model, _replace(x, None, new=x_hat), hook_name, batch)
        for key, logits in (("clean", logits_clean), ("spliced", logits_spliced)):
            # skip the prediction made *at* BOS (position 0), whose input is not spliced
            sums[key] += float(per_token_ce(logits, batch)[:, 1:].sum())
        logp_clean = logits_clean[:, 1:-1].log_softmax(-1)
        logp_spliced = logits_spliced[:, 1:-1].log_softmax(-1)
        sums["kl"] += float((logp_clean.exp() * (logp_clean - logp_spliced)).sum())
        n_tok += batch.shape[0] * (batch.shape[1] - 2)
        # non-BOS rows only: [b·(pos-1), d_in] and [b·(pos-1), d_sae]
        acts_all.append(x[:, 1:].reshape(-1, sae.d_in))
        recon_all.append(x_hat[:, 1:].reshape(-1, sae.d_in))
        latents_all.append(out.latents.reshape(*x.shape[:2], -1)[:, 1:].reshape(-1, sae.d_sae)
                           .to(x.device))
    ce = {"clean": sums["clean"] / n_tok, "spliced": sums["spliced"] / n_tok, **ablation}
    latents = torch.cat(latents_all)
    return {
        "ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero_ablated": ce["zero"],
        "ce_mean_ablated": ce["mean"],
        "ce_loss_recovered": _recovered(ce, "zero"),
        "ce_loss_recovered_vs_mean": _recovered(ce, "mean"),
        "ce_delta": ce["spliced"] - ce["clean"], "kl_div": sums["kl"] / n_tok,
        "fvu": fvu(torch.cat(acts_all), torch.cat(recon_all)), "l0": l0(latents),
        "dead_fraction": dead_fraction(latents),
    }


def _check_hook_acts(hook_acts: Tensor | None, tokens: Tensor, hook_name: str) -> Tensor | None:
    """``hook_acts`` as given (None stays None), once its shape is checked against the tokens."""
    if hook_acts is None:
        return None
    if not isinstance(hook_acts, Tensor) or hook_acts.ndim != 3 \
            or tuple(hook_acts.shape[:2]) != tuple(tokens.shape):
        shape = tuple(hook_acts.shape) if isinstance(hook_acts, Tensor) else type(hook_acts).__name__
        raise ValueError(f"hook_acts must be the activations at {hook_name!r} for these tokens, "
                         f"[{tokens.shape[0]}, {tokens.shape[1]}, d], got {shape}. Compute them "
                         "with run_to_hook(model, tokens, hook_name), or leave hook_acts out.")
    return hook_acts


def _acts_at_hook(model, batch: Tensor, hook_name: str, hook_acts: Tensor | None,
                  start: int) -> Tensor:
    """[b, pos, d] the activations at the hook for ``batch`` = tokens[start:start + b]: read from
    ``hook_acts`` when given, else computed."""
    if hook_acts is None:
        return run_to_hook(model, batch, hook_name)
    return hook_acts[start:start + len(batch)].to(batch.device)   # the tokens' device: the model's


DENSE = 0.1  # a latent firing on more than 10% of tokens counts as dense


@torch.no_grad()
def evaluate_sae(model, sae, hook_name: str, x: Tensor, tokens: Tensor | None, *,
                 density: Tensor, mean_act: Tensor,
                 ablation: dict[str, float] | None = None,
                 hook_acts: Tensor | None = None) -> dict[str, float]:
    """An SAE's metrics on held-out activations x [n, d_in]: FVU, L0, shrinkage γ around
    ``mean_act`` [d_in] (``metrics.relative_reconstruction_bias``), dead and dense fractions of
    ``density`` [d_sae] (firing on no / more than ``DENSE`` of tokens); and, given held-out
    ``tokens`` [m, context], CE loss recovered, ΔCE and KL with the SAE spliced in (``splice_eval``,
    mean-ablation at ``mean_act``; ``ablation``: its baselines, ``ablation_ce``, and ``hook_acts``:
    the tokens' activations at the hook, if known)."""
    # chunk by chunk, keeping only x_hat: all latents at once would be [n, d_sae] (4.4 GB for
    # 135k activations and 8192 latents)
    x_hat, active = [], 0.0
    for chunk in x.split(8192):
        out = sae(chunk)
        x_hat.append(out.x_hat)
        active += l0(out.latents) * len(chunk)
    x_hat = torch.cat(x_hat)
    result = {"l0": active / len(x), "fvu": fvu(x, x_hat), "dead": dead_fraction(density),
              "dense": float((density > DENSE).float().mean()),
              "gamma": relative_reconstruction_bias(x, x_hat, center=mean_act)}
    if tokens is not None:
        s = splice_eval(model, sae, hook_name, tokens, mean_act=mean_act, progress=False,
                        ablation=ablation, hook_acts=hook_acts)
        result.update(ce_recovered=s["ce_loss_recovered"], ce_delta=s["ce_delta"],
                      kl=s["kl_div"])
    return result


def per_token_ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """logits [n, pos, vocab], tokens [n, pos] -> [n, pos-1]: the loss of predicting tokens[:, t+1]
    at t. The tokens are moved to the logits' device (the lab keeps its tokens on the CPU)."""
    tokens = check_token_ids(tokens, logits.shape[-1]).to(logits.device)
    if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} do not "
                         "match: expected logits [n, pos, vocab] of the same tokens [n, pos].")
    logp_NPV = logits[:, :-1].float().log_softmax(-1)
    return -logp_NPV.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def _check_mean_act(mean_act: Tensor, d_in: int, hook_name: str) -> Tensor:
    """``mean_act`` as a finite [d_in] vector."""
    if not isinstance(mean_act, Tensor) or mean_act.numel() != d_in:
        shape = tuple(mean_act.shape) if isinstance(mean_act, Tensor) else type(mean_act).__name__
        raise ValueError(f"mean_act must be the mean activation [{d_in}] at {hook_name!r}, got "
                         f"{shape}. Leave it out to compute it from the tokens, or pass "
                         "acts.mean(0) of activations from that hook.")
    if not torch.isfinite(mean_act).all():
        raise ValueError("mean_act contains NaN/inf values: recompute it from finite "
                         "activations, or leave it out to compute it from the tokens.")
    return mean_act.reshape(d_in).float()


@torch.no_grad()
def codes_of(sae, x: Tensor, latents: Tensor | list[int]) -> Tensor:
    """[N, len(latents)] the chosen latents' activations on x [N, d_in] (any order, repeats
    allowed): ``sae.encode(x)[:, latents]``, taken from the code's entries
    (``BaseSAE.encode_entries``), so the [N, d_sae] code of a wide SAE is never built."""
    sae = as_sae(sae)
    code = sae.encode_entries(x)
    wanted, column = torch.as_tensor(latents, dtype=torch.long).unique(return_inverse=True)
    slot = torch.full((sae.d_sae,), -1, dtype=torch.long, device=code.indices.device)
    slot[wanted.to(slot.device)] = torch.arange(len(wanted), device=slot.device)
    where = slot[code.indices]                       # [nnz] the entry's column, or -1
    hit = where >= 0
    out = code.values.new_zeros(len(code.offsets), len(wanted))
    out[code.rows[hit], where[hit]] = code.values[hit]
    return out[:, column.to(out.device)]


@torch.no_grad()
def latent_density(sae, activations, batch_size: int = 8192) -> Tensor:
    """[d_sae] firing frequency of every latent over many activations: a tensor [..., d_in] or an
    iterable of batches (e.g. ``store.batches()``); every row counts once."""
    sae = as_sae(sae)
    if isinstance(activations, Tensor):
        activations = check_activations(activations, sae.d_in, name="activations")
        activations = activations.reshape(-1, sae.d_in).split(batch_size)
    counts, n = torch.zeros(sae.d_sae, dtype=torch.long, device=sae.W_dec.device), 0
    for batch in activations:
        code = sae.encode_entries(batch)        # the non-zero entries: no [B, d_sae] code built
        counts += torch.bincount(code.indices, minlength=sae.d_sae)
        n += len(code.offsets)
    if n == 0:
        raise ValueError("latent_density got no activations.")
    return counts.float() / n

