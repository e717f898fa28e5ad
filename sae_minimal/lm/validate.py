"""Input checks shared by the language-model tools. Each one fails at the call, with a message that
names what was wrong and what to pass instead, rather than a bare KeyError / IndexError from deep in
transformer-lens or silently wrong numbers:

    check_hook(model, "blocks.0.hook_resid_pots")   # ValueError: ... did you mean
                                                    #   'blocks.0.hook_resid_post'?
    check_tokens(model, tokens)       # integer ids [n, pos], 0 <= id < d_vocab, pos <= n_ctx
    check_latent(torch.tensor(3), d_sae)   # -> 3 (ints, numpy ints and 0-d tensors are accepted)
    check_finite(alpha, "alpha")      # NaN / inf hyper-parameters are refused

and the device helpers that keep token ids next to the model's weights (the lab keeps its tokens on
the CPU, the model may be on a GPU).
"""

from __future__ import annotations

import difflib
import math
import operator

import torch
from torch import Tensor


def check_hook(model, hook_name: object) -> str:
    """``hook_name`` if it is a hook of ``model``; else ValueError listing the closest names."""
    hooks = list(model.hook_dict)
    if isinstance(hook_name, str) and hook_name in model.hook_dict:
        return hook_name
    close = difflib.get_close_matches(str(hook_name), hooks, n=3, cutoff=0.6)
    example = next((h for h in hooks if h.endswith("hook_resid_post")), hooks[0])
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"e.g. {example!r}."
    raise ValueError(f"{hook_name!r} is not a hook of this model: {hint} The model's hooks are "
                     "listed by list(model.hook_dict) (residual stream: "
                     "'blocks.<layer>.hook_resid_post').")


def check_tokens(model, tokens: object, *, name: str = "tokens") -> Tensor:
    """``tokens`` if they are integer ids [n, pos] the model can read: 0 <= id < d_vocab and
    pos <= n_ctx. Negative ids are refused too (indexing would silently wrap them around)."""
    tokens = check_token_ids(tokens, model.cfg.d_vocab, name=name)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"{name} has {tokens.shape[1]} positions, but the model's context is "
                         f"n_ctx={model.cfg.n_ctx}: cut the windows to at most {model.cfg.n_ctx} "
                         f"tokens (e.g. {name}[:, :{model.cfg.n_ctx}]).")
    return tokens


def check_token_ids(tokens: object, vocab: int, *, name: str = "tokens") -> Tensor:
    """``tokens`` if they are an integer tensor [n, pos] with every id in [0, vocab)."""
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.is_complex() \
            or tokens.dtype == torch.bool:
        kind = (f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor)
                else type(tokens).__name__)
        raise ValueError(f"{name} must be an integer tensor of token ids [n_windows, context], "
                         f"got {kind}. Tokenise text with model.to_tokens(...), or convert ids "
                         f"with torch.as_tensor({name}, dtype=torch.long).")
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"{name} must be token ids [n_windows, context], got shape "
                         f"{tuple(tokens.shape)}. One sequence: {name}[None] (adds the batch "
                         "dimension).")
    if tokens.numel():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab:
            raise ValueError(f"{name} hold token ids from {low} to {high}, but the vocabulary "
                             f"has {vocab} ids (0 to {vocab - 1}). Were they made by another "
                             "model's tokenizer? Tokenise with this model's (model.to_tokens).")
    return tokens


def check_latent(latent: object, d_sae: int, *, name: str = "latent") -> int:
    """``latent`` as a Python int in [0, d_sae). Accepts ints, numpy integers and one-element
    integer tensors (``torch.tensor(3)``, ``density.argmax()``)."""
    if isinstance(latent, Tensor) and latent.numel() == 1:
        latent = latent.reshape(()).item() if not latent.is_floating_point() else latent.item()
    try:
        if isinstance(latent, bool):
            raise TypeError
        index = operator.index(latent)   # int, numpy integer; not float, str, lists
    except TypeError:
        raise TypeError(f"{name} must be one latent index (an int in [0, {d_sae})), got "
                        f"{latent!r} ({type(latent).__name__}). Pass e.g. int(...) of it; "
                        "to look at several latents, call once per latent.") from None
    if not 0 <= index < d_sae:
        raise ValueError(f"{name} must be in [0, {d_sae}) (this SAE has d_sae={d_sae} "
                         f"latents), got {index}.")
    return index


def check_latents(latents: object, d_sae: int | None, *, name: str = "latents") -> Tensor:
    """[n] long tensor of latent indices, each in [0, d_sae) (any when d_sae is None)."""
    ids = torch.as_tensor(latents)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.ndim > 1:
        raise ValueError(f"{name} must be a list or 1-D tensor of latent indices, got "
                         f"shape {tuple(ids.shape)} {ids.dtype}.")
    ids = ids.long().reshape(-1)
    if d_sae is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= d_sae):
        raise ValueError(f"{name} hold indices from {int(ids.min())} to {int(ids.max())}, but "
                         f"the SAE has d_sae={d_sae} latents (0 to {d_sae - 1}).")
    return ids


def check_finite(value: object, name: str) -> float:
    """``value`` as a float, refusing NaN and infinities (which would turn every output NaN)."""
    try:
        number = float(value)   # also 0-d tensors and numpy scalars
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r} "
                        f"({type(value).__name__}).") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}: a NaN or infinite "
                         f"{name} turns every activation it touches into NaN/inf. Check how it "
                         "was computed (e.g. a ratio with a zero norm).")
    return number


def check_width(width: int, d_in: int, hook_name: str, *, what: str = "The SAE") -> None:
    """ValueError unless activations of ``width`` at ``hook_name`` fit something with ``d_in``."""
    if width != d_in:
        raise ValueError(f"{what} expects d_in={d_in}, but the activations at {hook_name!r} are "
                         f"{width} wide: it was made for another hook or another model. Pass the "
                         f"hook it was made for (one {d_in} wide), or one made for this hook.")


def model_device(model) -> torch.device:
    """Where the model's input embedding lives (``model.cfg.device`` if it has no weights), i.e.
    where token ids must be for its forward pass and for indexing its outputs."""
    weight = getattr(model, "W_E", None)
    if isinstance(weight, Tensor):
        return weight.device
    return torch.device(model.cfg.device)


def to_model_device(model, tokens: Tensor) -> Tensor:
    """``tokens`` moved next to the model (a no-op when they already are)."""
    return tokens.to(model_device(model))


def module_device(module, default: torch.device) -> torch.device:
    """The device of ``module``'s first parameter (``default`` for parameter-free stand-ins)."""
    for param in getattr(module, "parameters", lambda: iter(()))():
        return param.device
    return default


__all__ = ["check_hook", "check_tokens", "check_token_ids", "check_latent", "check_latents",
           "check_finite", "check_width", "model_device", "to_model_device", "module_device"]
