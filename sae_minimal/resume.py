"""Resumable training: ``train_sae(..., checkpoint="run.pt")`` saves everything its loop needs to
go on (the SAE in training units, Adam's moments, the step, the data order's position, the
History) every ``checkpoint_every`` seconds, and a later call with the same SAE, data and settings
resumes from that file, bit for bit where the device is deterministic (a CPU is): the result is the
SAE an uninterrupted run gives. Long runs -- a reference SAE takes hours on a CPU -- then survive a
closed laptop, a killed kernel or a machine that goes away.

Written atomically (a temporary file, then a rename), so a run killed while saving leaves the
previous checkpoint intact. The file is removed when training finishes; a checkpoint written with
other settings or another SAE is refused with an error saying so, never silently overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .base import BaseSAE

FORMAT = 1


def fingerprint(sae: BaseSAE, activations: Tensor, settings: dict) -> dict:
    """What a checkpoint must match to be resumed: the SAE's class, shape, hyperparameters and
    initial decoder (a sum: another seed gives another), the data's shape and first rows (a sum),
    and every training setting that shapes the run."""
    head = activations.reshape(-1, activations.shape[-1])[:1024]
    return {"format": FORMAT, "class": type(sae).__name__, "d_in": sae.d_in, "d_sae": sae.d_sae,
            "config": sae.config(), "trained_tokens": sae.trained_tokens,
            "W_dec_sum": float(sae.W_dec.detach().double().sum()),
            "data_shape": list(activations.shape), "data_head_sum": float(head.double().sum()),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}


def load(path: str | os.PathLike, expected: dict) -> dict | None:
    """The training state saved at ``path`` (None when there is none yet); ValueError when the
    file is unreadable or was written by another run, saying what differs and what to do."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        saved = state["fingerprint"]
    except Exception as e:  # noqa: BLE001 -- any failure to read means the same thing here
        raise ValueError(f"The training checkpoint {path} cannot be read ({type(e).__name__}: "
                         f"{e}). It may be truncated or not a checkpoint; move or delete it to "
                         "train from the start.") from None
    differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
    if differ:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {expected.get(k)!r}"
                           for k in differ[:4])
        raise ValueError(f"The training checkpoint {path} belongs to another run ({detail}). "
                         "Resume it with the same SAE, activations and settings, or pass "
                         "another checkpoint path (or delete this file) to train from the start.")
    return state


def save(path: str | os.PathLike, state: dict) -> None:
    """``state`` to ``path``, atomically: a crash while writing keeps the previous file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def sae_state(sae: BaseSAE) -> dict:
    """The SAE's parameters and buffers, with its firing counters (not in its state_dict)."""
    return {"state_dict": {k: v.detach().cpu().clone() for k, v in sae.state_dict().items()},
            "tokens_since_fired": sae.tokens_since_fired.cpu().clone()}


@torch.no_grad()
def restore_sae(sae: BaseSAE, saved: dict) -> None:
    sae.load_state_dict(saved["state_dict"])
    sae.tokens_since_fired.copy_(saved["tokens_since_fired"])


__all__ = ["fingerprint", "load", "save", "sae_state", "restore_sae"]
