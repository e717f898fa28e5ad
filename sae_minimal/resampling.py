"""Dead-latent resampling (Bricken et al. 2023, "Towards Monosemanticity", appendix "Neuron
Resampling"): give each dead latent a new life pointing at an input the SAE reconstructs badly.

For a sample of inputs x [N, d_in] (in the units the SAE trains on):
  1. the loss on each input, L_n = ||x_n - x̂_n||², the SAE's squared error;
  2. for each dead latent i, draw an input n with probability ∝ L_n² ("proportional to the
     square of the autoencoder's loss"): inputs the dictionary misses are drawn most;
  3. v = (x_n - b_dec) / ||x_n - b_dec||: the drawn input as the encoder sees it, unit length;
     W_dec[i] = v, and W_enc[:, i] = 0.2 · (mean encoder-column norm of the alive latents) · v,
     so the new latent starts small beside the alive ones instead of stealing their inputs;
  4. every bias of latent i (b_enc[i]; Gated's b_gate[i], b_mag[i]) = 0, and Adam's moment
     estimates for every entry written are reset, so old momentum does not push the new
     directions straight back.

Differences from the paper, and why: we centre the drawn input by b_dec, as our encoder
computes (x - b_dec) W_enc + b_enc (the paper's x already sat in the decoder-bias frame); and
the dead test is ``sae.dead_mask(window)`` (tokens since the latent last fired), as everywhere
in the package. JumpReLU keeps its learned threshold, so a resampled latent whose pre-activation
stays below it stays dead: AuxK (TopK, BatchTopK, Matryoshka) and resampling are alternatives;
the chapter's worked example on dead features contrasts them.

``train_sae(..., resample_every=T)`` calls this every T training tokens during the first
``resample_until`` fraction of training (Bricken et al. resampled a few times early on).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BaseSAE


def _touched(sae: BaseSAE, idx: Tensor) -> list[tuple[torch.nn.Parameter, tuple]]:
    """(parameter, index) for every entry resampling writes: W_enc's columns, W_dec's rows and
    each per-latent bias (a 1-D parameter of length d_sae whose name starts with 'b_')."""
    touched = [(sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx))]
    touched += [(p, (idx,)) for name, p in sae.named_parameters()
                if name.startswith("b_") and p.shape == (sae.d_sae,)]
    return touched


@torch.no_grad()
def resample_dead_latents(sae: BaseSAE, x: Tensor, dead: Tensor,
                          optimizer: torch.optim.Optimizer | None = None, *,
                          encoder_scale: float = 0.2,
                          generator: torch.Generator | None = None) -> Tensor:
    """Resample the latents where ``dead`` is True, in place (see the module docstring).

    Args:
        sae:        any variant of the package.
        x:          [N, d_in] inputs to draw from, in the units the SAE is trained on.
        dead:       [d_sae] bool, e.g. ``sae.dead_mask()``.
        optimizer:  Adam (or any optimizer keeping 'exp_avg' / 'exp_avg_sq' state): its moments
                    for the written entries are zeroed. None: nothing to reset.
        encoder_scale: the new encoder column's norm, as a fraction of the alive ones' mean.
        generator:  for reproducible draws.
    Returns:
        the indices [n_dead] of the latents resampled (empty when none was dead).
    """
    if dead.shape != (sae.d_sae,) or dead.dtype != torch.bool:
        raise ValueError(f"dead must be a bool tensor of shape [d_sae={sae.d_sae}] (e.g. "
                         f"sae.dead_mask()), got {dead.dtype} of shape {tuple(dead.shape)}.")
    idx = dead.nonzero().squeeze(1).to(sae.W_dec.device)
    if idx.numel() == 0:
        return idx
    x = x.to(sae.W_dec.device, sae.W_dec.dtype)
    squared_error = (x - sae.decode(sae.encode(x))).pow(2).sum(dim=-1)        # L_n  [N]
    weight = squared_error.pow(2)                                             # ∝ L_n²
    if not torch.isfinite(weight).all() or float(weight.sum()) <= 0:
        weight = torch.ones_like(weight)   # a perfect (or broken) fit: draw uniformly
    drawn = torch.multinomial(weight.cpu().double(), idx.numel(), replacement=True,
                              generator=generator).to(x.device)
    v = x[drawn] - sae.b_dec                                                 # [n_dead, d_in]
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead.to(idx.device)
    alive_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)

    sae.W_dec[idx] = v
    sae.W_enc[:, idx] = (encoder_scale * alive_norm * v).T
    for param, where in _touched(sae, idx)[2:]:
        param[where] = 0.0
    if optimizer is not None:
        for param, where in _touched(sae, idx):
            state = optimizer.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][where] = 0.0
    sae.tokens_since_fired[idx] = 0   # a fresh window to prove itself in
    return idx


__all__ = ["resample_dead_latents"]
