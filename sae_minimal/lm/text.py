"""Token data for the language-model notebooks: the bundled Shakespeare corpus (offline), or a
Hugging Face dataset such as NeelNanda/pile-10k when online.

Every window starts with the BOS token, as GPT-2 SAE work does; ``cache_activations`` then drops
(or marks) that first position because its residual norm dwarfs the rest.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache

import torch
from torch import Tensor

from .models import lm_extra, lm_name, offline, standin_file


@lru_cache(maxsize=1)
def _corpus() -> dict:
    with gzip.open(standin_file("corpus.txt.gz"), "rt", encoding="utf-8") as f:
        return json.load(f)


def corpus_texts(split: str = "train") -> list[str]:
    """The bundled Shakespeare texts: split "train" (46 texts) or "held_out" (Hamlet, The Tempest,
    Twelfth Night)."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}.")
    return _corpus()[split]


def _bos_id(tokenizer) -> int:
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("The tokenizer has no BOS token; windows need one at position 0.")
    return bos


def windows_from_ids(ids: Tensor, bos: int, context: int, n_windows: int | None = None,
                     seed: int = 0) -> Tensor:
    """Cut a 1-D token stream into [n, context] windows of consecutive text, each prefixed with BOS.
    With ``n_windows``, a seeded random subset of the windows (in a random order)."""
    body = context - 1
    n = len(ids) // body
    if n == 0:
        raise ValueError(f"Only {len(ids)} tokens: not enough for one window of {context}.")
    chunks = ids[: n * body].reshape(n, body)   # [n, context - 1]
    if n_windows is not None:
        if n_windows > n:
            raise ValueError(f"Asked for {n_windows} windows "
                             f"but the text only has {n} of length {context}.")
        chunks = chunks[torch.randperm(n, generator=torch.Generator().manual_seed(seed))
                        [:n_windows]]
    return torch.cat([torch.full((len(chunks), 1), bos, dtype=chunks.dtype), chunks], dim=1)


def corpus_tokens(tokenizer, split: str = "train", context: int = 128, n_windows: int | None = None,
                  seed: int = 0) -> Tensor:
    """[n, context] token windows from the bundled corpus (BOS first). ``tokenizer``: a model's
    tokenizer."""
    ids = _encode_split(tokenizer, split)
    return windows_from_ids(ids, _bos_id(tokenizer), context, n_windows, seed)


def _encode_split(tokenizer, split: str) -> Tensor:
    key = (id(tokenizer), split)
    if key not in _ENCODED:
        bos = _bos_id(tokenizer)
        ids = []
        for text in corpus_texts(split):
            ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [bos]
        _ENCODED[key] = torch.tensor(ids, dtype=torch.long)
    return _ENCODED[key]


_ENCODED: dict = {}


HELD_OUT_EVERY = 10   # web text: every 10th document is held out, the other nine are for training


def hf_dataset_tokens(tokenizer, dataset: str = "NeelNanda/pile-10k", context: int = 128,
                      n_windows: int = 2000, seed: int = 0, split: str = "train") -> Tensor:
    """[n, context] windows from a Hugging Face text dataset (needs the network and the `datasets`
    package). Such datasets have one split, so ours are by document: split "held_out" reads every
    ``HELD_OUT_EVERY``-th document and "train" the others, so no held-out window shares a document
    with a training window."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}.")
    if offline():
        raise RuntimeError("SAE_MINIMAL_OFFLINE=1: not downloading a dataset; "
                           "use corpus_tokens() instead.")
    ds = lm_extra("datasets").load_dataset(dataset, split="train")
    bos, ids = _bos_id(tokenizer), []
    for i, row in enumerate(ds):
        if (i % HELD_OUT_EVERY == 0) != (split == "held_out"):
            continue
        ids += tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [bos]
        if len(ids) > (n_windows + 1) * context:
            break
    return windows_from_ids(torch.tensor(ids), bos, context, n_windows, seed)


def load_tokens(model, n_windows: int, context: int = 128, split: str = "train",
                seed: int = 0) -> Tensor:
    """Token windows for ``model`` (from ``load_lm``): the bundled corpus for the stand-in, a
    web-text dataset for GPT-2 when online (the bundled corpus, GPT-2-tokenised, otherwise). Either
    way, "train" and "held_out" windows come from different texts (plays, or documents)."""
    if lm_name(model) == "gpt2" and not offline():
        try:
            return hf_dataset_tokens(model.tokenizer, context=context, n_windows=n_windows,
                                     seed=seed, split=split)
        except Exception as e:  # noqa: BLE001
            print(f"Could not load the web-text dataset ({type(e).__name__}); "
                  "using the bundled corpus.")
    return corpus_tokens(model.tokenizer, split, context, n_windows, seed)
