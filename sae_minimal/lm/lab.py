"""The language-model lab shared by notebooks 04-06: one model, one layer, one activation cache,
SAEs trained once.

    lab = Lab()                 # loads the model (with its banner), picks the layer and the sizes
    store = lab.activations()   # cached on disk the first time, reused afterwards
    sae = lab.sae("topk-k16", lambda seed: TopKSAE(lab.d_in, lab.d_sae, k=16, seed=seed))
                                # trained once, then loaded
    lab.evaluate(sae)           # CE loss recovered, FVU, L0, dead/dense latents, shrinkage γ

Why a lab object: notebook 05 steers with the SAE that 04 trained and 06 reuses 04's activations,
yet each notebook must also run on its own. ``Lab.sae`` trains what is missing and loads what an
earlier notebook left in the cache folder (``SAE_MINIMAL_CACHE``, default ``~/.cache/sae_minimal``).
The cache key holds every setting that changes the result (class, shape, hyper-parameters, tokens,
seed, mode), so nothing is silently reused for the wrong thing and nothing is overwritten; deleting
the folder only costs re-training. The folder is named by the model's weights
(``models.fingerprint``), not only its name. An entry that cannot be loaded, or that loads as
something other than its key says (an edited cfg.json, NaN weights), is moved aside and retrained.
Entries are saved to a temporary folder that is then renamed into place, and a lock file makes a
second process that asks for the same SAE wait for the first one's training, then load its result.

Sizes come from one switch, ``SAE_MINIMAL_FAST=1`` (CI, ``course run --fast``): a small cache and
short training so that every notebook runs in a couple of minutes. The default (full) sizes give
recognisable latents. The model comes from ``Lab(model)`` or, when that is None (as in the
notebooks), from ``SAE_MINIMAL_MODEL`` ("standin", "gpt2", or "gpt2-shaped": GPT-2's code path on
random weights, which is how the tests run the notebooks through it), else ``load_lm``'s choice.

Reference SAEs (``lab.reference``): on the bundled stand-in, the ones shipped with the package; on
any other model (GPT-2), the same recipes (``references.RECIPES``) trained here once and cached like
every other SAE of the lab, at ``reference_tokens`` (and half of it, for the convergence check).

(Slightly over the package's ~250-line guide: the cache key, the move-aside of bad entries and the
locking belong next to the one method that trains or loads.)
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import shutil
import time
import weakref
from pathlib import Path
from typing import Callable, Hashable, NamedTuple

import torch
from torch import Tensor

from .. import __version__
from .activations import ActivationStore, cache_activations, run_to_hook
from .cachefiles import file_lock
from ..base import BaseSAE
from .evaluation import ablation_ce, evaluate_sae, latent_density
from ..io import as_sae, load_sae, save_sae
from ..metrics import mmcs
from .models import GPT2_SHAPED, fingerprint, lm_name, load_lm
from .references import (RECIPES, budget_runs, load_reference, names_with_twins, reference_card,
                         seed_runs, training_curve, twin_of)
from .text import load_tokens
from ..train import History, default_lr, train_concurrently, train_sae

# The residual stream in the middle of each model: block 2 of the stand-in's 4, block 6 of GPT-2
# small's 12.
HOOKS = {"standin": "blocks.2.hook_resid_post", "gpt2": "blocks.6.hook_resid_post",
         GPT2_SHAPED: "blocks.0.hook_resid_post"}   # after the first of its 2 random blocks

# (full, fast) sizes. Context 128 with BOS dropped: 127 activations per window.
SIZES = {
    "train_windows": (4000, 800),       # activation cache: 508k / 102k tokens
    "train_tokens": (600_000, 100_000),  # tokens each SAE trains on (the cache is cycled over)
    "eval_windows": (64, 16),           # held-out windows for the model-in-the-loop metrics
                                        # (8k / 2k tokens)
    "reference_tokens": (4_000_000, 100_000),  # a reference recipe trained here (no shipped ones)
    "steer_prompts": (48, 16),          # notebook 05: prompts steered, tokens generated for each,
    "steer_new_tokens": (16, 12),
    "ablation_windows": (128, 32),      # and held-out windows / latents of the ablation test
    "ablation_latents": (24, 6),
}
# Per model, what differs from SIZES. gpt2-shaped has random weights and exists to run GPT-2's code
# path through the notebooks in a test: seconds, not minutes (its numbers mean nothing anyway).
MODEL_SIZES = {GPT2_SHAPED: {"train_windows": (16, 16), "train_tokens": (4096, 4096),
                             "eval_windows": (2, 2), "reference_tokens": (4096, 4096),
                             "steer_prompts": (4, 4), "steer_new_tokens": (4, 4),
                             "ablation_windows": (8, 8), "ablation_latents": (3, 3)}}
# Gao et al.'s learning-rate rule, 2e-4·√(16384 / d_sae), is tuned for runs of billions of tokens.
# The lab's runs are under a million, and 4x that rate gets much further in them: TopK k=16, 2048
# latents, 600k stand-in tokens, held-out FVU 0.166 at Gao's rate vs 0.123 at 4x, for a few per
# cent more dead latents (measured while writing notebook 04).
LR_MULTIPLIER = 4.0


def lab_lr(d_sae: int) -> float:
    """The learning rate ``Lab.sae`` trains at by default: ``LR_MULTIPLIER`` times Gao et al.'s
    2e-4·√(16384 / d_sae)."""
    return LR_MULTIPLIER * 2e-4 * (16384 / d_sae) ** 0.5


class _Job(NamedTuple):
    """One SAE for ``Lab._train_or_load``: built, untrained, with its settings and cache folder."""

    sae: BaseSAE
    settings: dict
    path: Path
    progress: bool


class LabRun(NamedTuple):
    """Where ``Lab.sae`` got an SAE from (``lab.run(sae)``)."""

    path: Path
    """The cache folder the SAE is saved in."""
    history: History | None
    """The History of a run trained just now; None when the SAE was loaded from the cache."""


def is_fast() -> bool:
    """True when ``SAE_MINIMAL_FAST=1``: short training for CI and quick checks (03-08)."""
    return os.environ.get("SAE_MINIMAL_FAST", "0") == "1"


def cache_dir() -> Path:
    """Where the lab keeps activations and trained SAEs: ``$SAE_MINIMAL_CACHE`` or
    ``~/.cache/sae_minimal``."""
    return Path(os.environ.get("SAE_MINIMAL_CACHE") or Path.home() / ".cache" / "sae_minimal")


class Lab:
    """One model and layer with its activation cache, held-out tokens and cached SAEs.

    Args:
        model:      "gpt2", "standin", "gpt2-shaped", a HookedTransformer with a tokenizer, or None:
                    ``SAE_MINIMAL_MODEL`` if set, else GPT-2 when online and the bundled stand-in
                    otherwise (see ``load_lm``).
        hook:       the activations' hook point (default: ``HOOKS`` for the model, the middle of
                    its residual stream).
        fast:       short sizes (default: ``SAE_MINIMAL_FAST``).
        expansion:  d_sae = expansion · d_in for ``lab.d_sae``.
    """

    def __init__(self, model=None, *, hook: str | None = None, fast: bool | None = None,
                 expansion: int = 8, device: str | torch.device = "cpu", verbose: bool = True):
        self.fast = is_fast() if fast is None else fast
        self.device = torch.device(device)
        self.verbose = verbose
        if model is None:
            model = os.environ.get("SAE_MINIMAL_MODEL") or None
        self.model = (load_lm(model, device=device, verbose=verbose)
                      if model is None or isinstance(model, str) else model.to(device))
        self.model_name = lm_name(self.model)
        self.hook = hook or HOOKS.get(self.model_name)
        if self.hook not in self.model.hook_dict:
            raise ValueError(
                f"{self.hook!r} is not a hook point of {self.model_name!r}; pass "
                f"hook=..., e.g. 'blocks.{self.model.cfg.n_layers // 2}.hook_resid_post' (the "
                f"middle of its residual stream)." if self.hook else
                f"No default layer for a model named {self.model_name!r}: pass hook=..., e.g. "
                f"Lab(model, hook='blocks.{self.model.cfg.n_layers // 2}.hook_resid_post').")
        self.d_in = self.model.cfg.d_model
        self.d_sae = expansion * self.d_in
        sizes = {**SIZES, **MODEL_SIZES.get(self.model_name, {})}
        self.size = {key: value[1 if self.fast else 0] for key, value in sizes.items()}
        self.tokens = load_tokens(self.model, self.size["train_windows"], split="train")  # [n, 128]
        self.held_out = load_tokens(self.model, self.size["eval_windows"],
                                    split="held_out")  # [m, 128]
        # keyed by the weights, not only the name: a rebuilt stand-in gets a folder of its own
        self.fingerprint = fingerprint(self.model)
        self.root = cache_dir() / (f"{self.model_name}-{self.fingerprint[:8]}-{self.hook}-"
                                   f"{'fast' if self.fast else 'full'}")
        self._eval_acts: Tensor | None = None
        self._held_acts: Tensor | None = None
        self._mean_act: Tensor | None = None
        self._density_rows: Tensor | None = None
        self._densities: weakref.WeakKeyDictionary[BaseSAE, tuple] = weakref.WeakKeyDictionary()
        self._runs: weakref.WeakKeyDictionary[BaseSAE, LabRun] = weakref.WeakKeyDictionary()
        self._reference_runs: dict[str, dict[int, dict]] = {}
        self._announced: set[str] = set()
        self._ablation_ce: dict[str, float] | None = None
        if verbose:
            print(f"Lab: {self.model_name} at {self.hook} (d_in {self.d_in}, d_sae {self.d_sae}); "
                  f"{'FAST' if self.fast else 'full'} mode: {self.tokens.numel():,} cached tokens, "
                  f"{self.size['train_tokens']:,} training tokens per SAE; "
                  f"cache folder {self.root}")

    # --- data -------------------------------------------------------------------------------------
    def activations(self) -> ActivationStore:
        """The training activations [rows, d_in] at ``self.hook``, cached once (resumes if
        interrupted)."""
        return cache_activations(self.model, self.hook, self.tokens, self.root / "activations")

    def eval_activations(self) -> Tensor:
        """[m·127, d_in] held-out activations (BOS dropped), kept in memory."""
        if self._eval_acts is None:
            with torch.no_grad():   # [m, 128, d_in], BOS included: what splicing starts from
                self._held_acts = torch.cat([run_to_hook(self.model, self.held_out[i:i + 16],
                                                         self.hook)
                                             for i in range(0, len(self.held_out), 16)])
            self._eval_acts = self._held_acts[:, 1:].reshape(-1, self.d_in).float()
            self._mean_act = self._eval_acts.mean(0)
        return self._eval_acts

    # --- SAEs -------------------------------------------------------------------------------------
    def _key(self, name: str, sae: BaseSAE, settings: dict) -> str:
        spec = {"class": type(sae).__name__, "d_in": sae.d_in, "d_sae": sae.d_sae,
                "config": sae.config(), "settings": settings, "version": __version__,
                "model": self.fingerprint, "tokens": self.activations().meta["tokens_sha1"]}
        unsaved = _unsaved_settings(sae)
        if unsaved:     # only then: the keys of SAEs at their defaults stay what they were
            spec["unsaved"] = unsaved
        digest = hashlib.sha1(
            json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{name}-{digest}"

    def sae(self, name: str, make: Callable[[int], BaseSAE], *, n_tokens: int | None = None,
            seed: int = 0, batch_size: int = 1024, lr: float | None = None, progress: bool = True,
            **train_kw) -> BaseSAE:
        """The SAE built by ``make(seed)`` and trained on this lab's activations: loaded from the
        cache folder when an identical run finished before, trained (and saved) otherwise. ``seed``
        sets both the initialisation (pass it on to the SAE's constructor) and the order of the
        training data. ``lr`` defaults to ``LR_MULTIPLIER`` times Gao et al.'s rule; other
        keyword arguments go to ``train_sae``. Several at once, trained side by side: ``saes``.

        ``lab.run(sae)`` says where it came from: its cache folder and, if trained now, its History.
        """
        job = self._job(name, make, n_tokens=n_tokens, seed=seed, batch_size=batch_size, lr=lr,
                        progress=progress, **train_kw)
        sae, run = self._train_or_load(job, self.activations())
        self._runs[sae] = run
        return sae

    def saes(self, runs: dict[Hashable, dict], *, workers: int | None = None,
             progress: bool = True) -> dict[Hashable, BaseSAE]:
        """{key: lab.sae(**kwargs)} for ``runs`` {key: kwargs}, e.g.
        ``{"k=8": dict(name="TopK-k=8", make=lambda seed: TopKSAE(lab.d_in, lab.d_sae, k=8,
        seed=seed))}``: the same SAEs, cache entries and ``lab.run`` records as one call each,
        with the missing ones trained ``workers`` at a time on a CPU (``train_concurrently``: 2
        side by side on a 2-core machine: a sweep of 04 trained 1.44x sooner than one after the
        other, with the same weights). One bar counts the SAEs; on a GPU they train one after the
        other."""
        jobs = {key: self._job(progress=False, **kwargs) for key, kwargs in runs.items()}
        store = self.activations()
        if workers is None and self.device.type != "cpu":
            workers = 1      # one GPU: a second run would only queue behind the first
        # the biggest first, so that the run left training alone at the end is a short one
        order = sorted(jobs, key=lambda key: -jobs[key].sae.d_sae * jobs[key].settings["n_tokens"])
        desc = f"{len(jobs)} SAEs (trained or loaded)" if progress else None
        done = train_concurrently([lambda job=jobs[key]: self._train_or_load(job, store)
                                   for key in order], workers=workers, desc=desc)
        for sae, run in done:
            self._runs[sae] = run
        by_key = dict(zip(order, (sae for sae, _ in done)))
        return {key: by_key[key] for key in jobs}

    def _job(self, name: str, make: Callable[[int], BaseSAE], *, n_tokens: int | None = None,
             seed: int = 0, batch_size: int = 1024, lr: float | None = None, progress: bool = True,
             **train_kw) -> _Job:
        """``lab.sae``'s SAE, built (here, on the calling thread: ``make`` may use the global
        generator), with its training settings and cache folder."""
        n_tokens = n_tokens or self.size["train_tokens"]
        torch.manual_seed(seed)
        sae = make(seed).to(self.device)
        # the rate notebook 04 describes (train.default_lr, which also counts d_in and the run's
        # length, gives 3.2e-3 at 256 x 2048 and 586 steps: held-out FVU 0.120 vs 0.122 here)
        lr = lr if lr is not None else lab_lr(sae.d_sae)
        settings = {"n_tokens": n_tokens, "seed": seed, "batch_size": batch_size, "lr": lr,
                    **train_kw}
        return _Job(sae, settings, self.root / "saes" / self._key(name, sae, settings), progress)

    def _train_or_load(self, job: _Job, store: ActivationStore) -> tuple[BaseSAE, LabRun]:
        """(the SAE, its LabRun): loaded if cached, else trained and saved. Safe to run for
        different jobs in threads side by side (``saes``)."""
        sae, settings, path = job.sae, job.settings, job.path
        # one process trains a given entry; another asking for it meanwhile waits, then loads it
        with file_lock(path.with_name(f".{path.name}.lock"), f"training {path.name}"):
            loaded = self._load_entry(path, sae)
            if loaded is not None:
                return loaded, LabRun(path, None)
            history = train_sae(sae, store.batches(settings["batch_size"],
                                                   n_tokens=settings["n_tokens"],
                                                   seed=settings["seed"]),
                                progress=job.progress, device=self.device, **settings)
            kept = _save_entry(sae, path, self.device, self.sae_lens_metadata(), history)
        # another writer got there first: use its copy
        return (kept, LabRun(path, None)) if kept is not sae else (sae, LabRun(path, history))

    def sae_lens_metadata(self) -> dict:
        """What SAELens's ``cfg.metadata`` says about this lab's SAEs (``save_sae`` writes it):
        the hook HookedSAETransformer splices them at, the model, and the windows they read
        (BOS first; the BOS position itself is left out of training and splicing)."""
        return {"hook_name": self.hook, "model_name": self.model.cfg.model_name,
                "context_size": int(self.tokens.shape[1]), "prepend_bos": True}

    def _load_entry(self, path: Path, made: BaseSAE) -> BaseSAE | None:
        """The SAE cached at ``path`` if it loads and is what ``made`` would become; otherwise
        None, with a bad entry moved aside (kept for inspection, never deleted)."""
        if not path.exists():
            return None
        try:
            loaded = load_sae(path, device=self.device)
            problem = _mismatch(loaded, made)
            if problem:
                raise ValueError(problem)
            return loaded
        # any failure to load means a lost cache entry, never a reason to stop: retrain it
        except Exception as e:  # noqa: BLE001
            aside = path.with_name(f"{path.name}.unreadable-{time.time_ns()}")
            print(f"The cached SAE at {path} could not be loaded ({type(e).__name__}: {e}); "
                  f"moved it to {aside} and training again.")
            shutil.move(str(path), str(aside))
            return None

    def run(self, sae: BaseSAE) -> LabRun:
        """(cache folder, History or None) of an SAE that ``lab.sae`` returned."""
        if sae not in self._runs:
            raise KeyError("This SAE did not come from this lab's .sae(...): "
                           "it has no cache entry here.")
        return self._runs[sae]

    def curves(self, sae: BaseSAE) -> History | None:
        """The training History of an SAE from ``lab.sae``, trained now or loaded (saved with it
        as history.json); None for an entry saved before the lab kept them."""
        path = self.run(sae).path / "history.json"
        return History(json.loads(path.read_text())) if path.exists() else None

    # --- reference SAEs ---------------------------------------------------------------------------
    @property
    def shipped_references(self) -> bool:
        """True when this lab reads what the shipped references were trained on (the bundled
        stand-in, these weights, this hook): ``reference`` loads them. Otherwise (GPT-2, another
        layer) it trains their recipes here."""
        card = reference_card()
        return (self.model_name, self.hook, self.fingerprint) == (
            "standin", card["hook"], card["model_fingerprint"])

    def reference(self, name: str) -> BaseSAE:
        """Reference SAE ``name`` (``references.list_references()``, e.g. "topk-k16-2048" or its
        twin "topk-k16-2048-seed1") on this lab's device. On the stand-in, the one shipped with the
        package (seconds). On another model there is none: the same recipe (``RECIPES``: class,
        width, k or coefficient, seeds, the default learning rate) is trained on this lab's
        activations for ``lab.size["reference_tokens"]`` tokens, once, and cached. Published GPT-2
        SAEs to compare with: ``references.load_pretrained('gpt2-small-res-jb')`` (online)."""
        if self.shipped_references:
            return load_reference(name, device=self.device)
        base, index = self._reference_name(name)
        return self._recipe(base, index, self.size["reference_tokens"])

    def reference_runs(self, name: str) -> dict[int, dict]:
        """Reference ``name``'s runs by training tokens, ascending (T/2 and T, each trained from
        scratch): {tokens: held-out "fvu", "l0", "dead", "dense", "gamma", "ce_recovered", "kl",
        "lr", "seconds", "curve" (training-batch "tokens", "fvu", "l0", "dead_frac") and, for a
        first seed that has a twin, "mmcs" to it}. From the card for shipped references; measured
        here, once, otherwise."""
        base, index = self._reference_name(name)
        if self.shipped_references:
            return seed_runs(reference_card()["saes"][base]["runs"], index)
        if name not in self._reference_runs:
            total, seeds = self.size["reference_tokens"], RECIPES[base][2]
            runs = {}
            for n_tokens in (total // 2, total):
                sae = self._recipe(base, index, n_tokens)
                history = self.curves(sae)
                run = {**self.evaluate(sae), "lr": max(history["lr"]),
                       "seconds": history["seconds"], "curve": training_curve(history)}
                if index == 0 and len(seeds) > 1:
                    alive = self.density(sae) > 0
                    run["mmcs"] = mmcs(sae.W_dec[alive], self._recipe(base, 1, n_tokens).W_dec)
                runs[n_tokens] = run
            self._reference_runs[name] = runs
        return self._reference_runs[name]

    def reference_budgets(self, name: str) -> dict[int, dict]:
        """Held-out metrics of reference ``name``'s recipe at every training budget there is, each
        a run from scratch with its own schedule: {tokens: metrics with "source"}. For the shipped
        references the card's table and its ladders (``references.budget_runs``; a ladder's runs
        keep their training "curve" only if imported with ``--ladder-curves``); otherwise the two
        runs ``reference_runs`` trains here."""
        base, index = self._reference_name(name)
        if self.shipped_references:
            return budget_runs(reference_card(), base, index)
        return {t: {**run, "source": str(self.device)} for t, run in self.reference_runs(name).items()}

    def reference_seed(self, name: str) -> int:
        """The random seed reference ``name`` was initialised (and its data ordered) with."""
        base, index = self._reference_name(name)
        seeds = (reference_card()["saes"][base]["seeds"] if self.shipped_references
                 else RECIPES[base][2])
        return seeds[index]

    def _reference_name(self, name: str) -> tuple[str, int]:
        base, index = twin_of(name)
        if base not in RECIPES or index >= len(RECIPES[base][2]):
            names = names_with_twins({b: seeds for b, (_, _, seeds) in RECIPES.items()})
            raise KeyError(f"No reference SAE named {name!r}. The references are: "
                           f"{', '.join(names)}.")
        return base, index

    def _recipe(self, name: str, index: int, n_tokens: int) -> BaseSAE:
        """Reference recipe ``name`` with its ``index``-th seed, trained here for ``n_tokens``."""
        cls, kw, seeds = RECIPES[name]
        if self.verbose and name not in self._announced:
            self._announced.add(name)
            print(f"No shipped reference SAEs for this lab ({self.model_name}, {self.hook}; the "
                  f"shipped ones read the bundled stand-in's {reference_card()['hook']}): the "
                  f"{name} recipe is trained here for {n_tokens:,} tokens, once (then cached).")
        lr = default_lr(self.d_in, kw["d_sae"], math.ceil(n_tokens / 1024))   # as the build's
        return self.sae(f"reference-{name}", lambda seed: cls(self.d_in, seed=seed, **kw),
                        n_tokens=n_tokens, seed=seeds[index], lr=lr, progress=self.verbose)

    # --- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, sae: BaseSAE, *, splice: bool = True) -> dict[str, float]:
        """Metrics on held-out text: FVU, L0, shrinkage γ around the mean
        (``metrics.relative_reconstruction_bias``), dead and dense fractions (firing on no / more
        than 10% of 100k cached *training* tokens: the lab's held-out windows are too few to call
        a latent dead; the reference card counts on its 135k held-out tokens, so the two can differ
        by a few latents), and with ``splice`` the model-in-the-loop CE loss
        recovered and KL (``evaluation.splice_eval``). ``sae``: ours, or a SAELens SAE object."""
        sae = as_sae(sae)
        x = self.eval_activations()
        # the same for every SAE, so computed once: the ablation baselines, and the held-out
        # activations at the hook (the layers before it need not run again for each SAE)
        if splice and self._ablation_ce is None:
            self._ablation_ce = ablation_ce(self.model, self.hook, self.held_out, self._mean_act,
                                            hook_acts=self._held_acts)
        return evaluate_sae(self.model, sae, self.hook, x, self.held_out if splice else None,
                            density=self.density(sae), mean_act=self._mean_act,
                            ablation=self._ablation_ce, hook_acts=self._held_acts)

    def density(self, sae: BaseSAE, max_rows: int = 100_000) -> Tensor:
        """[d_sae] firing frequency over (up to ``max_rows``) cached training activations (read
        from disk once). Remembered per SAE until its weights change: the notebooks ask for the
        same SAE's density in several cells, and each pass encodes 100k rows."""
        if self._density_rows is None or len(self._density_rows) < max_rows:
            self._density_rows = self.activations().load_all(max_rows).to(self.device)
        key = (max_rows, _weights_key(sae)) if isinstance(sae, BaseSAE) else None
        known = self._densities.get(sae) if key is not None else None
        if known is not None and known[0] == key:
            return known[1].clone()
        density = latent_density(sae, self._density_rows[:max_rows]).cpu()
        if key is not None:
            self._densities[sae] = (key, density.clone())
        return density


def _weights_key(sae: BaseSAE) -> tuple:
    """What changes when any of ``sae``'s weights or buffers does: each tensor's storage and
    autograd version counter (bumped by every in-place update: an optimiser step, copy_, a
    no_grad edit), and its sum, for edits through ``.data``, which the counter does not see."""
    with torch.no_grad():
        return tuple((t.data_ptr(), t._version, float(t.float().sum()))
                     for t in (*sae.parameters(), *sae.buffers()))


def _unsaved_settings(sae: BaseSAE) -> dict:
    """Constructor settings that change training but that cfg.json (``config()``) does not record,
    where they differ from their defaults: e.g. ``TopKSAE(aux_coeff=0.0)``, the AuxK-off control,
    which would otherwise share the cache entry of the default TopK. (Settings whose default is
    None, such as k_aux, are computed from the others and are not told apart.)"""
    saved, out = set(sae.config()) | {"self", "d_in", "d_sae", "seed"}, {}
    for cls in type(sae).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if name in saved or name in out or param.default in (inspect.Parameter.empty, None):
                continue
            value = getattr(sae, name, param.default)
            if isinstance(value, (bool, int, float, str)) and value != param.default:
                out[name] = value
    return out


def _mismatch(loaded: BaseSAE, made: BaseSAE) -> str | None:
    """Why a loaded cache entry is not the SAE its key promises (edited cfg.json, NaN weights),
    or None."""
    if type(loaded) is not type(made) or (loaded.d_in, loaded.d_sae) != (made.d_in, made.d_sae):
        return (f"it holds a {type(loaded).__name__}({loaded.d_in}, {loaded.d_sae}), not the "
                f"{type(made).__name__}({made.d_in}, {made.d_sae}) its name stands for")
    # settings in the units of x change when training folds its input scale in (JumpReLU's
    # bandwidth): the cache key already holds the value the SAE was built with
    def settings(sae: BaseSAE) -> str:
        kept = {k: v for k, v in sae.config().items() if k not in type(sae).config_in_input_units}
        return json.dumps(kept, sort_keys=True, default=str)
    if settings(loaded) != settings(made):
        return f"its settings {loaded.config()} differ from {made.config()}"
    if not all(torch.isfinite(p).all() for p in loaded.parameters()):
        return "its weights contain NaN/inf values"
    return None


def _save_entry(sae: BaseSAE, path: Path, device: torch.device, metadata: dict,
                history: History | None = None) -> BaseSAE:
    """Save ``sae`` (with SAELens's ``metadata``: hook and model names) and its training
    ``history`` at ``path`` atomically (a temporary folder renamed into place) and return it; if
    another writer saved this entry meanwhile, keep theirs and return it loaded instead."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_sae(sae, tmp, metadata=metadata)
    if history is not None:
        (tmp / "history.json").write_text(json.dumps(history, default=float))
    sae.sae_lens_metadata = metadata   # as load_sae would give it: a later save_sae keeps it
    try:
        os.rename(tmp, path)   # fails if path is a non-empty folder (or exists, on Windows)
        return sae
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.is_dir():
            raise
        print(f"{path} was saved by another process while this one trained; using that copy.")
        return load_sae(path, device=device)


__all__ = ["Lab", "LabRun", "HOOKS", "SIZES", "MODEL_SIZES", "cache_dir", "is_fast", "lab_lr"]
