"""sae-minimal: small, readable sparse autoencoders for the textbook chapter
'Sparse Autoencoders for Interpretability: TopK, JumpReLU, Matryoshka, and Scaling'.

    from sae_minimal import TopKSAE, train_sae
    sae = TopKSAE(d_in=64, d_sae=512, k=8)
    history = train_sae(sae, activations)          # activations: [N, 64]
    out = sae(x)                                   # out.x_hat, out.latents, out.loss, out.losses

The package in layers (each imports only from the layers below it):

    course/   checks, the course CLI, the demo            the notebooks' tooling
    lm/       language models, activations, evaluation,   SAEs on a real model's activations
              dashboards, steering, splitting, the lab
    theory/   toy models of superposition, capacity       the chapter's theory, no SAE needed
    core      base, one file per variant, kernels,        what the chapter's equations are
              train, metrics, io, synthetic
"""

from . import metrics
from .base import BaseSAE, Encoding, SAEOutput
from .batchtopk import BatchTopKSAE
from .gated import GatedSAE
from .io import CheckpointError, load_sae, save_sae
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE, MatryoshkaTopKSAE
from .relu import ReLUSAE
from .resampling import resample_dead_latents
from .topk import TopKSAE
from .train import History, TrainingDiverged, TrainingWarning, train_sae

__version__ = "0.3.0"

__all__ = [
    "BaseSAE", "Encoding", "SAEOutput", "ReLUSAE", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE",
    "GatedSAE", "MatryoshkaSAE", "MatryoshkaTopKSAE", "train_sae", "History", "TrainingDiverged",
    "TrainingWarning", "save_sae", "load_sae", "CheckpointError", "metrics", "resample_dead_latents",
]
