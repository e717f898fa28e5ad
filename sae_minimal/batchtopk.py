"""The BatchTopK SAE of Bussmann, Leask & Nanda (2024), arXiv:2412.06410.

Training:   f = BatchTopK_{k·B}(ReLU(pre))   keep the k·B largest activations of the whole batch
Inference:  f = pre · 1[pre > θ]              a JumpReLU with one global threshold θ

Relaxing TopK from "k per input" to "k on average over the batch" lets easy inputs use fewer latents
and hard ones more. At inference the batch is gone, so θ is estimated during training as a running
average of the smallest activation BatchTopK kept (sec. 3 of the paper), and re-estimated with the
final weights when training ends (``calibrate_threshold``): in short runs the activations drift
faster than the running average follows, which left the inference L0 at about half of k on the
stand-in.
The loss is reconstruction plus AuxK, exactly as for TopK.

Saved in SAELens's format as a ``jumprelu`` SAE (threshold θ for every latent): that *is* its
inference-time computation.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor

from .base import Encoding
from .kernels import batch_topk_entries, sparse_max_density
from .topk import TopKSAE


def batch_topk_relu(pre: Tensor, k: int) -> Tensor:
    """Keep the k·B largest ReLU'd entries of pre [B, d_sae] over the whole batch, zero the rest."""
    acts = pre.relu().flatten()  # [B·d_sae]
    n_keep = min(k * pre.shape[0], acts.numel())
    values, indices = acts.topk(n_keep, sorted=False)
    return torch.zeros_like(acts).scatter_(0, indices, values).reshape(pre.shape)


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE: TopKSAE's arguments (``k`` is now the *average* L0), plus
    ``threshold_momentum`` for the running average of θ. Loss: reconstruction + AuxK, inherited
    from TopKSAE."""

    architecture = "jumprelu"
    scaled_with_input = ("b_enc", "b_dec", "threshold")

    def __init__(self, d_in: int, d_sae: int, *, threshold_momentum: float = 0.99, **kw):
        super().__init__(d_in, d_sae, **kw)
        m = threshold_momentum
        if isinstance(m, bool) or not isinstance(m, Real) or not 0 <= m < 1:
            raise ValueError(f"threshold_momentum must be in [0, 1), got {m!r}; "
                             "0.99 averages θ over about the last 100 batches.")
        self.threshold_momentum = float(m)
        # θ < 0 means "not estimated yet"; stored per latent to match the JumpReLU format.
        self.register_buffer("threshold", torch.full((d_sae,), -1.0, dtype=self.W_enc.dtype,
                                                      device=self.W_enc.device))

    def _keep(self, pre: Tensor) -> Tensor:
        """What the code keeps of pre [B, d_sae]: in training the k·B largest activations of the
        batch (ascending flat indices, ``kernels.batch_topk_entries``), at inference a mask of
        those above θ."""
        if self.training:
            return batch_topk_entries(pre, self.k)
        if (self.threshold < 0).any():
            raise RuntimeError("BatchTopKSAE has no inference threshold yet: train it first "
                               "(train_sae estimates θ), or call sae.train() to use "
                               "batch-level TopK.")
        return pre > self.threshold

    def activation(self, pre: Tensor) -> Tensor:
        keep = self._keep(pre)
        if keep.dtype != torch.bool:
            keep = torch.zeros_like(pre, dtype=torch.bool).view(-1).index_fill_(0, keep, True)
        latents = pre * keep.view_as(pre)
        if self.training:
            self._update_threshold(latents[latents > 0])
        return latents

    def encode_flat(self, x: Tensor) -> Encoding:
        """f = BatchTopK_{k·B}(ReLU(pre)) in training, pre · 1[pre > θ] at inference; kept as its
        entries (``kernels.sparse_encode``) unless k / d_sae is above this device's crossover."""
        if self.sparse_path is None and self.k > sparse_max_density(x.device) * self.d_sae:
            pre = self.pre_acts(x)
            return Encoding(self.activation(pre), pre)
        pre, code = self.sparse_pre_acts(x, self._keep, self.b_enc)
        if code is None:
            return Encoding(self.activation(pre), pre)
        if self.training:
            self._update_threshold(code.values.detach())
        return Encoding(None, pre, sparse=code)

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        """θ <- running average of the smallest kept activation (kept: [n] the code's values)."""
        kept = kept[kept > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min()
        if (self.threshold < 0).all():
            self.threshold.fill_(smallest)
        else:
            m = self.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * smallest)

    def after_training(self, x: Tensor, batch_size: int) -> None:
        self.calibrate_threshold(x, batch_size)

    def sae_lens_weights(self) -> dict[str, Tensor]:
        return {**super().sae_lens_weights(), "threshold": self.threshold}

    def sae_lens_cfg(self) -> dict:
        return {}   # saved as a JumpReLU: no k

    @classmethod
    def kwargs_from_sae_lens_cfg(cls, cfg: dict) -> dict:
        return {}   # a JumpReLU checkpoint: θ is in the weights, k in our metadata

    @torch.no_grad()
    def calibrate_threshold(self, x: Tensor, batch_size: int) -> None:
        """Set θ from the final weights: the mean, over batches of ``x`` [N, d_in] (training
        units), of the smallest activation BatchTopK keeps -- the paper's estimate without the
        running average's lag."""
        smallest = []
        for batch in x.split(batch_size):
            pre = self.pre_acts(batch).reshape(-1)
            kept = pre[batch_topk_entries(pre.view(len(batch), -1), self.k)]
            if kept.numel():
                smallest.append(kept.min())
        if smallest:
            self.threshold.fill_(float(torch.stack(smallest).mean()))
