"""The TopK SAE of Gao et al. (2024), 'Scaling and evaluating sparse autoencoders'
(arXiv:2406.04093).

    f = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc))        (eq. 3: keep the k largest, zero the rest)
    L = ||x - x̂||²  +  α · ||e - ê||² · Var(x) / Var(e)     (sec. 2.4, AuxK; see auxk_loss)

Sparsity is exact (L0 <= k) and there is no penalty on magnitudes, so no shrinkage. The gradient of
TopK is the mask itself: selected latents pass gradient like a linear layer, the others get none --
no straight-through estimator is needed (the chapter's Exercise 4).

AuxK keeps latents alive: with e = x - x̂ the main model's residual, take the k_aux largest
pre-activations among *dead* latents (no firing in the last ``dead_window`` tokens) and ask them to
reconstruct e, without b_dec: ê = TopK_kaux(pre[dead]) @ W_dec[dead]. α = 1/32 in the paper.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor

from .base import BaseSAE, Encoding, check_coeff, mse
from .kernels import pre_entries, sparse_decode, sparse_max_density, topk_entries


def topk_select(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(ReLU'd values, indices), each [B, k]: the k largest entries of each row of pre
    [B, d_sae]."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices


def topk_relu(pre: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of each row of pre [B, d_sae], ReLU them, zero the rest."""
    values, indices = topk_select(pre, k)
    return torch.zeros_like(pre).scatter_(-1, indices, values)


def check_k(k: int, d_sae: int, name: str = "k") -> int:
    """Return ``k`` if it is a valid number of latents to keep out of ``d_sae``; raise ValueError
    saying what to use otherwise."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}.")
    if k > d_sae:
        raise ValueError(f"{name}={k} is larger than d_sae={d_sae}: a TopK SAE cannot keep more "
                         f"latents than it has. Use {name} <= d_sae (typically {name} << d_sae, "
                         "e.g. 32 of 16384).")
    return k


def check_count(name: str, value: float) -> int:
    """``value`` as an int if it is a whole number >= 1 (e.g. 100_000 or 1e5); otherwise a
    ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, Real) \
            or not float(value).is_integer() or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}.")
    return int(value)


def auxk_loss(sae: BaseSAE, x: Tensor, x_hat: Tensor, pre: Tensor, k_aux: int,
              coeff: float) -> Tensor:
    """AuxK (Gao et al. 2024, sec. 2.4, and their code): dead latents reconstruct the residual
    e = x - x̂, with the error measured relative to e's variance,

        L_aux = α · min(n_dead / k_aux, 1) · ||e - ê||² / Var(e) · Var(x)

    Var(·) sums the squared deviation from the batch mean over dims and averages over the batch,
    the reduction of ``mse``. Gao et al. divide both their terms by a variance (reconstruction by
    Var(x), AuxK by Var(e)); our reconstruction term is not divided, so AuxK is multiplied by
    Var(x) to keep the paper's balance. Normalised, AuxK's pull does not fade as x̂ improves and e
    shrinks, which is when latents die. min(n_dead / k_aux, 1) (as in SAELens and sparsify) lets
    the term grow with the number of dead latents instead of switching on at full strength for the
    first one.

    x, x_hat [B, d_in]; pre [B, d_sae], the SAE's pre-activations of x: AuxK's gradient goes to
    the encoder from the B·k entries it reads (``kernels.pre_entries``), not through a dense
    gradient of pre. Returns 0 when no latent is dead.
    """
    # latents with no firing in the last sae.dead_window tokens
    dead_idx = sae.dead_mask().nonzero().squeeze(1)
    n_dead = len(dead_idx)
    if n_dead == 0 or coeff == 0:
        return pre.new_zeros(())
    k = min(k_aux, n_dead)
    e = (x - x_hat).detach()                     # the main model is not trained by this term
    # the top k of the dead columns only: the same entries as the top k of pre with every live
    # column masked to -inf, without a masked [B, d_sae] copy (a wide SAE has few dead latents)
    _, j = pre.detach()[:, dead_idx].topk(k, dim=-1, sorted=False)
    latent = dead_idx[j]                                     # [B, k]
    # values = pre[rows, latent].relu(), its gradient sent to the encoder from these B·k entries
    rows = torch.arange(len(pre), device=pre.device).repeat_interleave(k)
    b_dec = sae.b_dec if sae.apply_b_dec_to_input else None
    values = pre_entries(pre, rows, latent.view(-1), x, sae.W_enc, sae.b_enc, b_dec)
    e_hat = sparse_decode(latent, values.view(-1, k).relu(), sae.W_dec)   # b_dec is in x_hat
    var_e = mse(e.mean(0).expand_as(e), e)
    var_x = mse(x.mean(0).expand_as(x), x).detach()
    # e constant over the batch (B = 1): no variance to normalise by; then Var(x) = 0 too
    ratio = torch.where(var_e > 0, var_x / var_e, torch.ones_like(var_e))
    return coeff * min(n_dead / k_aux, 1.0) * ratio * mse(e_hat, e)


class TopKSAE(BaseSAE, sae_lens_default=True):
    """TopK SAE with AuxK.

    Args:
        k:           latents kept per input (the exact L0).
        k_aux:       latents AuxK may revive per input (paper: a power of two near d_in / 2).
        aux_coeff:   α, weight of the AuxK loss (paper: 1/32).
        dead_window: a latent is dead after this many training tokens without firing
                     (paper: 10M tokens; scale it to your run length).
    """

    architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, *, k: int = 32, k_aux: int | None = None,
                 aux_coeff: float = 1 / 32, dead_window: int = 100_000, **kw):
        super().__init__(d_in, d_sae, **kw)
        self.k = check_k(k, d_sae)
        self.k_aux = check_k(k_aux if k_aux is not None else min(d_sae, max(1, d_in // 2)),
                             d_sae, "k_aux")
        self.aux_coeff = check_coeff("aux_coeff", aux_coeff)
        self.dead_window = check_count("dead_window", dead_window)

    def activation(self, pre: Tensor) -> Tensor:
        return topk_relu(pre, self.k)

    def encode_flat(self, x: Tensor) -> Encoding:
        """f = ReLU(TopK_k(pre)), kept as its (at most k per row) positive entries
        (``kernels.topk_entries``, ``kernels.sparse_encode``) unless k / d_sae is above this
        device's sparse/dense crossover."""
        if self.sparse_path is None and self.k > sparse_max_density(x.device) * self.d_sae:
            return super().encode_flat(x)
        pre, code = self.sparse_pre_acts(x, lambda pre: topk_entries(pre, self.k), self.b_enc)
        if code is None:
            return Encoding(self.activation(pre), pre)
        return Encoding(None, pre, sparse=code)

    def loss_terms(self, x: Tensor, x_hat: Tensor, enc: Encoding) -> dict[str, Tensor]:
        losses = {"mse": mse(x_hat, x)}
        if self.training:
            losses["auxk"] = auxk_loss(self, x, x_hat, enc.pre, self.k_aux, self.aux_coeff)
        return losses

    def config(self) -> dict:
        return {"k": self.k}

    def sae_lens_cfg(self) -> dict:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def kwargs_from_sae_lens_cfg(cls, cfg: dict) -> dict:
        # io.load_sae has already moved an older layout's activation_fn_kwargs.k to "k".
        if "k" not in cfg:
            raise ValueError("'k' is missing: a 'topk' checkpoint needs the number of latents it "
                             "keeps, as 'k' or in 'activation_fn_kwargs'.")
        return {"k": cfg["k"]}  # check_k (in __init__) refuses what is not a k
