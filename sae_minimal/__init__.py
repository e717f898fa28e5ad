"""sae-minimal: small, readable sparse autoencoders for the textbook chapter
'Sparse Autoencoders for Interpretability: TopK, JumpReLU, Matryoshka, and Scaling'.

    from sae_minimal import TopKSAE, train_sae
    sae = TopKSAE(d_in=64, d_sae=512, k=8)
    history = train_sae(sae, activations)          # activations: [N, 64]
    out = sae(x)                                   # out.x_hat, out.latents, out.loss, out.losses
"""

from . import metrics
from .base import BaseSAE, SAEOutput
from .batchtopk import BatchTopKSAE
from .gated import GatedSAE
from .io import CheckpointError, load_sae, save_sae
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .relu import ReLUSAE
from .topk import TopKSAE
from .train import History, train_sae

__version__ = "0.1.0"

__all__ = [
    "BaseSAE", "SAEOutput", "ReLUSAE", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE", "GatedSAE", "MatryoshkaSAE",
    "train_sae", "History", "save_sae", "load_sae", "CheckpointError", "metrics",
]
