"""Reference SAEs shipped with the package: trained to convergence on the stand-in, loaded offline.

    from sae_minimal.lm.references import load_reference, list_references, reference_card
    sae = load_reference("topk-k16-2048")           # a TopKSAE in float32, in well under a second
    reference_card()["saes"]["topk-k16-2048"]       # how it was trained and what it measures

Researchers compare their SAEs with published ones (Gemma Scope, gpt2-small-res-jb) instead of
retraining; these are the course's equivalent for the offline stand-in: the five variants of
notebook 04 at 2048 latents with a second seed each (``"<name>-seed1"``, for MMCS), and the widths
notebook 06 compares. All read ``blocks.2.hook_resid_post`` of the bundled stand-in model. They are
stored in SAELens format with float16 weights, and loaded as float32.
``scripts/build_reference_saes.py`` rebuilds them (its docstring says how "converged" is judged),
and writes ``card.json`` and ``REFERENCE_CARD.md``: per SAE its settings, training tokens and
seconds, held-out FVU, L0, dead/dense fractions, CE loss recovered, KL and MMCS to its twin, at T/2
and T training tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from ..base import BaseSAE
from ..batchtopk import BatchTopKSAE
from ..io import from_sae_lens, load_sae
from ..jumprelu import JumpReLUSAE
from ..matryoshka import MatryoshkaSAE
from ..relu import ReLUSAE
from ..topk import TopKSAE

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "assets" / "reference_saes"
CARD_JSON = "card.json"
HOOK = "blocks.2.hook_resid_post"
_REBUILD = "python scripts/build_reference_saes.py (from a clone of the repository)"

# name -> (constructor, keyword arguments, seeds): notebook 04's middle setting of each variant at
# 2048 latents with a twin for MMCS, and the widths 06 and 07 compare (the 512-wide one with a twin
# too: 06 compares the Matryoshka SAE's 512-prefix with a same-width second seed). Seeds differ between
# references: same-seed SAEs of different widths would start with the narrower one's decoder rows.
# ``scripts/build_reference_saes.py`` trains these on the stand-in; ``Lab.reference`` trains the
# same recipes on a model that has no shipped references (GPT-2).
RECIPES = {
    "l1-2048":              (ReLUSAE, {"d_sae": 2048, "l1_coeff": 3.0}, (1000, 1001)),
    "topk-k16-2048":        (TopKSAE, {"d_sae": 2048, "k": 16}, (1010, 1011)),
    "batchtopk-k16-2048":   (BatchTopKSAE, {"d_sae": 2048, "k": 16}, (1020, 1021)),
    "jumprelu-2048":        (JumpReLUSAE, {"d_sae": 2048, "l0_coeff": 0.3}, (1030, 1031)),
    "matryoshka-k16-2048":  (MatryoshkaSAE, {"d_sae": 2048, "k": 16}, (1040, 1041)),
    "topk-k16-512":         (TopKSAE, {"d_sae": 512, "k": 16}, (1050, 1051)),
    "topk-k16-8192":        (TopKSAE, {"d_sae": 8192, "k": 16}, (1060,)),
    "matryoshka-k16-8192":  (MatryoshkaSAE, {"d_sae": 8192, "k": 16}, (1070,)),
}


def twin_of(name: str) -> tuple[str, int]:
    """("topk-k16-2048", 1) for "topk-k16-2048-seed1"; (name, 0) for a first seed."""
    base, _, index = name.rpartition("-seed")
    return (base, int(index)) if base and index.isdigit() else (name, 0)


def training_curve(history: dict, points: int = 60) -> dict:
    """A training History thinned to at most about ``points`` entries: "tokens", "fvu", "l0",
    "dead_frac" (training-batch values), as the card keeps them. Half the kept entries are evenly
    spaced in index (the late, flat part a linear axis shows) and half evenly spaced in log tokens
    (the early batches a log axis shows); the first and the last entry are always kept, so the
    curve ends where training ended."""
    n = len(history["tokens"])
    keep = set(range(n)) if n <= points else _thin(history["tokens"], points // 2)
    return {k: [round(float(history[k][i]), 5) for i in sorted(keep)]
            for k in ("tokens", "fvu", "l0", "dead_frac") if k in history}


def _thin(tokens: Sequence[float], half: int) -> set[int]:
    """Indices into the ascending ``tokens``: ``half`` evenly spaced in index, ``half`` nearest to
    evenly spaced log-token targets, and the first and last."""
    n = len(tokens)
    by_index = torch.linspace(0, n - 1, half).round().long().tolist()
    logs = torch.tensor([float(t) for t in tokens], dtype=torch.float64).clamp_min(1).log()
    targets = torch.linspace(float(logs[0]), float(logs[-1]), half, dtype=torch.float64)
    by_log = torch.searchsorted(logs, targets).clamp_max(n - 1).tolist()
    return {0, n - 1, *by_index, *by_log}


def seed_runs(runs: dict, index: int = 0) -> dict[int, dict]:
    """The runs {"<tokens>/seed<i>": metrics} of a card entry (or of the ladder) that belong to its
    ``index``-th seed, by training tokens, ascending: {tokens: metrics}."""
    picked = {int(key.split("/")[0]): run for key, run in runs.items()
              if key.endswith(f"/seed{index}")}
    return dict(sorted(picked.items()))


def budget_runs(card: dict, name: str, index: int = 0) -> dict[int, dict]:
    """Every run of reference ``name``'s recipe (its ``index``-th seed) at every training budget the
    card holds, its table's and its ladders': {tokens: metrics}, ascending, each with "source" (the
    table: "card", else the ladder's hardware). Each budget is a run from scratch with its own
    schedule, so the runs together give held-out FVU against training tokens. Where a budget occurs
    more than once the table's run wins, then the later ladder's (later ladders ran the current
    recipe; an early one used other seeds)."""
    found = {}
    sources = [("card", card["saes"].get(name, {}).get("runs", {}))]
    sources += [(ladder["hardware"], ladder["runs"].get(name, {}))
                for ladder in reversed(card.get("ladders", []))]
    for source, runs in sources:
        for tokens, run in seed_runs(runs, index).items():
            found.setdefault(tokens, {**run, "source": source})
    return dict(sorted(found.items()))


@lru_cache(maxsize=1)
def _card(folder: str) -> dict:
    path = Path(folder) / CARD_JSON
    if not path.exists():
        raise FileNotFoundError(
            f"No reference SAEs at {folder} ({CARD_JSON} is missing). They ship with the package; "
            f"an editable install from a repository without them can rebuild them: {_REBUILD}.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it with git checkout, or "
                         f"rebuild: {_REBUILD}.") from None


def reference_card(folder: str | Path = REFERENCE_DIR) -> dict:
    """The card: {"hook", "model", "model_fingerprint", ..., "saes": {name: {"class", "config",
    "tokens", "seeds", "runs": {"<tokens>/seed<i>": metrics and training curve}, "converged"}},
    "ladders": [{"hardware", "note", "runs": {name: {"<tokens>/seed<i>": metrics}}}]}.
    "seeds" are the runs' random seeds; "seed<i>" in run keys and in twin names ("<name>-seed1")
    counts them: seed0 is the first, seed1 its twin."""
    return _card(str(folder))


def list_references(folder: str | Path = REFERENCE_DIR) -> list[str]:
    """Names ``load_reference`` accepts: each SAE of the card, and "<name>-seed1" for its twin."""
    return names_with_twins({name: entry["seeds"] for name, entry in reference_card(folder)["saes"].items()})


def names_with_twins(seeds: dict[str, Sequence]) -> list[str]:
    """["a", "a-seed1", "b", ...] for {"a": (seed, seed), "b": (seed,)}: a reference's name for its first
    seed, "<name>-seed<i>" for the others (``twin_of`` reads them back)."""
    return [name if i == 0 else f"{name}-seed{i}" for name, s in seeds.items() for i in range(len(s))]


def load_reference(name: str, *, device: str | torch.device = "cpu",
                   folder: str | Path = REFERENCE_DIR) -> BaseSAE:
    """The reference SAE ``name`` (see ``list_references``) as float32 on ``device``, in eval mode.
    It reads the stand-in's ``blocks.2.hook_resid_post`` (``HOOK``)."""
    names = list_references(folder)
    if name not in names:
        raise KeyError(f"No reference SAE named {name!r}. The references are: {', '.join(names)}.")
    sae = load_sae(Path(folder) / name, device=device)
    return sae.float().eval()


# Published GPT-2 small SAEs that read the lab's layer (after block 6; block 7's resid_pre is the
# same vector), by SAELens release and SAE id. Online only; ``load_pretrained`` takes any other
# release too.
GPT2_PRETRAINED = {
    "gpt2-small-res-jb": ("gpt2-small-res-jb", "blocks.7.hook_resid_pre"),   # Bloom 2024, L1, 24576
    "gpt2-small-resid-post-v5-32k": ("gpt2-small-resid-post-v5-32k",          # Gao et al. 2024,
                                     "blocks.6.hook_resid_post"),             # TopK k 32, 32768
}


def load_pretrained(release: str, sae_id: str | None = None, *,
                    device: str | torch.device = "cpu") -> BaseSAE:
    """A published SAE from SAELens's pretrained releases (``sae_lens``'s pretrained_saes.yaml,
    e.g. ``"gpt2-small-res-jb"``), downloaded from the Hugging Face hub and converted to one of our
    classes, so that it can stand next to an SAE you trained (``lab.evaluate``, dashboards,
    steering). ``sae_id`` defaults to the entry of ``GPT2_PRETRAINED`` (the lab's GPT-2 layer).

    Needs the network and ``sae_lens`` (the dev extra, or ``pip install sae-lens``). Raises
    RuntimeError offline (``SAE_MINIMAL_OFFLINE=1``), and ``io.CheckpointError`` naming the field
    for a release that computes something our classes do not (e.g. inputs normalised at run
    time): use the SAELens object directly then."""
    from .models import lm_extra, offline

    if sae_id is None:
        if release not in GPT2_PRETRAINED:
            raise ValueError(f"Pass sae_id= for release {release!r} (its SAE ids are listed in "
                             "sae_lens's pretrained_saes.yaml); defaults exist for "
                             f"{', '.join(GPT2_PRETRAINED)}.")
        release, sae_id = GPT2_PRETRAINED[release]
    if offline():
        raise RuntimeError(f"SAE_MINIMAL_OFFLINE=1: not downloading {release} / {sae_id}. "
                           "Offline, compare with the shipped references: load_reference(name), "
                           f"names from list_references().")
    theirs = lm_extra("sae_lens").SAE.from_pretrained(release, sae_id, device=str(device))
    ours = from_sae_lens(theirs).eval()
    ours.sae_lens_metadata = {**ours.sae_lens_metadata,
                              "release": release, "sae_id": sae_id}
    return ours


def convergence(half: dict, full: dict) -> dict:
    """The card's verdict from a reference's held-out metrics at T/2 and T tokens: FVU and MMCS
    change by under 2% relative, the dead fraction by under 2% relative or 0.2 percentage points
    (a relative change of a fraction near 0 is noise, not a trend)."""
    def rel(key):
        return abs(full[key] - half[key]) / max(abs(half[key]), 1e-12)
    changes = {"fvu": rel("fvu"), "dead_points": abs(full["dead"] - half["dead"]) * 100,
               "dead": rel("dead") if half["dead"] > 0 else 0.0}
    ok = changes["fvu"] < 0.02 and (changes["dead"] < 0.02 or changes["dead_points"] < 0.2)
    if "mmcs" in full:
        changes["mmcs"] = rel("mmcs")
        ok = ok and changes["mmcs"] < 0.02
    return {**{k: round(v, 4) for k, v in changes.items()}, "ok": bool(ok)}


def _cells(run: dict) -> str:
    """The table cells both of the card's tables give a run: L0, dead, dense, CE recovered, KL."""
    return (f"{run['l0']:.1f} | {run['dead']:.2%} | {run['dense']:.2%} | "
            f"{run['ce_recovered']:.3f} | {run['kl']:.3f}")


def _hardware(card: dict) -> str:
    if card.get("hardware", "CPU") == "CPU":
        return "2 shared CPU cores, one thread"
    return (f"one {card['hardware']} shared by {card.get('jobs', 1)} runs at a time, so a run "
            "alone would take less")


def _where(card: dict, run: dict) -> str:
    """" (on <hardware>)" for a run trained elsewhere than the card's machine, else ""."""
    home = card.get("hardware", "CPU")
    where = run.get("hardware", home)
    return "" if where == home else f" (on {where})"


def _elsewhere_note(card: dict) -> str:
    """A sentence for a card whose runs did not all train on its machine."""
    if not any(_where(card, run) for entry in card["saes"].values()
               for run in entry["runs"].values()):
        return ""
    return (" Seconds marked with another machine's name are that run's, trained there (several "
            "runs sharing one GPU), on training activations computed there by "
            "`scripts/standin_plain.py`, which agree with the CPU's to about 1e-6 (relative).")


def card_markdown(card: dict) -> str:
    """REFERENCE_CARD.md from the card: one table row per SAE and budget."""
    lines = ["# Reference SAEs",
             "",
             f"Stand-in model (fingerprint `{(card['model_fingerprint'] or 'not stamped')[:12]}`), "
             f"`{card['hook']}`, "
             f"trained by `scripts/build_reference_saes.py` (sae_minimal {card['sae_minimal']}, "
             f"torch {card['torch']}, batch {card['batch_size']}, default learning rate) on "
             f"{card['training_activations']:,} training activations; metrics on "
             f"{card['held_out_activations']:,} held-out ones, float16 weights as shipped "
             f"(seconds: wall time of each training loop on {_hardware(card)}). "
             "Each row is a run from scratch with its own schedule. Converged: from T/2 to T "
             "tokens, FVU and MMCS change by under 2% relative and the dead fraction by under 2% "
             "relative or 0.2 percentage points."
             + _elsewhere_note(card),
             "",
             "| SAE | settings | tokens | seconds | FVU | L0 | dead | dense | CE recovered | KL "
             "| MMCS to twin | converged |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, entry in card["saes"].items():
        cfg = {k: v for k, v in entry["config"].items() if k not in ("d_in", "seed")}
        settings = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in cfg.items() if not isinstance(v, (list, dict)))
        for tokens, run in seed_runs(entry["runs"]).items():
            if tokens > entry["tokens"]:
                continue
            final = tokens == entry["tokens"]           # the shipped run: settings and verdict
            c = entry.get("converged")
            verdict = ("yes" if c["ok"] else "**no**") + (
                f" (FVU {c['fvu']:.1%}, dead {c['dead_points']:.2f} pt"
                + (f", MMCS {c['mmcs']:.1%}" if "mmcs" in c else "") + ")") if final and c else ""
            if final and "target_tokens" in entry:
                verdict += ((" " if verdict else "") + f"shipped below its T of "
                            f"{entry['target_tokens']:,} tokens, not trained yet")
            mmcs = f"{run['mmcs']:.3f}" if "mmcs" in run else ""
            lines.append(f"| {name} | {settings if final else ''} | "
                         f"{tokens:,} | {run['seconds']:.0f}{_where(card, run)} | "
                         f"{run['fvu']:.4f} | "
                         f"{_cells(run)} | {mmcs} | {verdict} |")
    for ladder in card.get("ladders", []):
        lines += _ladder_markdown(ladder)
    return "\n".join(lines) + "\n"


def _ladder_markdown(ladder: dict) -> list[str]:
    """One of the card's ladders ({"hardware", "note", "runs"}): held-out metrics of runs at
    growing budgets, weights not shipped; MMCS where both seeds' weights were at hand."""
    lines = ["", f"## Convergence ladder ({ladder['hardware']})", "", ladder["note"], "",
             "| SAE | tokens | FVU seed0 / seed1 | FVU change from half the tokens | L0 | dead "
             "| dense | CE recovered | KL | MMCS to twin | MMCS change |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, runs in ladder["runs"].items():
        firsts, twins = seed_runs(runs, 0), seed_runs(runs, 1)
        for tokens, run in firsts.items():
            twin, half = twins.get(tokens), firsts.get(tokens // 2)
            mmcs = f"{run['mmcs']:.3f}" if "mmcs" in run else ""
            lines.append(f"| {name} | {tokens:,} | {run['fvu']:.4f}"
                         + (f" / {twin['fvu']:.4f}" if twin else "")
                         + f" | {_change(run, half, 'fvu')} | {_cells(run)} | {mmcs} | "
                         f"{_change(run, half, 'mmcs')} |")
    return lines


def _change(run: dict, half: dict | None, key: str) -> str:
    """run[key]'s relative change from the run at half the tokens, as "+1.2%" ("" if either
    lacks it)."""
    if not half or key not in run or key not in half:
        return ""
    return f"{run[key] / half[key] - 1:+.1%}"


__all__ = ["load_reference", "list_references", "reference_card", "load_pretrained", "convergence",
           "seed_runs", "budget_runs", "training_curve", "twin_of", "names_with_twins", "GPT2_PRETRAINED", "RECIPES", "REFERENCE_DIR",
           "HOOK"]
