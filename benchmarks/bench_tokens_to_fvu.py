"""Tokens to FVU: held-out FVU after 50k / 100k / 200k / 400k training tokens, every library with
its own defaults, on the same activations in the same batches.

    python benchmarks/bench_tokens_to_fvu.py [--data synthetic,hierarchical,standin]
                                             [--budgets 50000,100000,200000,400000] [--quick]
                                             [--only ours,sparsify] [--no-bf16]

Data (each: a training tensor, held-out rows never trained on, the SAE's d_sae and k):
  synthetic     sae_minimal.synthetic: d_in 64, 256 true features firing with p = 1/64 (true L0
                about 4), d_sae 512, k 4 (issue 18's setting).
  hierarchical  SAELens's generator (sae_lens.synthetic.SyntheticModel): the same widths with
                Zipfian firing, a forest of parent/child features (half the parents' children
                mutually exclusive) and low-rank correlations; true L0 about 3.6. Skipped without
                SAELens.
  standin       the bundled stand-in LM's blocks.2.hook_resid_post (d_in 256), d_sae 2048, k 16:
                the lab's training cache (built on first use, about a minute) and its held-out
                text.

Each (method, budget) is its own run from the same initial seed: with a budget the learning-rate
schedules (ours, dictionary_learning's) decay to zero at its end, so one long run read at
checkpoints would flatter the short budgets of libraries without a schedule. Every method gets
batches of 1024 rows drawn in the same order, so only the libraries' defaults differ:
  ours               train_sae with defaults (default_lr(d_in, d_sae, n_tokens), warm-up, decay,
                     input normalisation, geometric-median b_dec); TopK, BatchTopK, Matryoshka
                     (BatchTopK) with the task's k, JumpReLU with its default L0 coefficient;
                     "TopK bf16" is precision="bf16" (the < 1% check of mixed precision), read
                     against "TopK seed 1", fp32 from another initial seed.
  sparsify           (pip install eai-sparsify) SparseCoder with its trainer's defaults: FVU loss,
                     ScheduleFree sign-SGD, lr 5e-3 / sqrt(d_sae / 2^14), b_dec at the first
                     batch's mean, no AuxK; evaluated at ScheduleFree's averaged weights.
  dictionary_learning (pip install dictionary-learning) TopKTrainer defaults (lr 2e-4 /
                     sqrt(d_sae / 2^14), AuxK 1/32, no decay), except that its 1000 warm-up steps
                     become min(1000, steps // 20): it refuses runs shorter than its warm-up.
  SAELens            (pip install sae-lens) TopKTrainingSAE and SAETrainer with its defaults: Adam
                     3e-4, constant schedule, no warm-up, no input normalisation.
A library that is not installed is skipped with a note. Columns: held-out FVU at each budget (L0
and, on synthetic data, the share of true features recovered at cos > 0.9 after the longest);
the last table gives, per method, the fewest tokens at which it reaches the best peer's FVU
at 400k tokens (or the target printed).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import platform
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

import sae_minimal as sm
from sae_minimal.metrics import fvu, max_cosines
from sae_minimal.synthetic import make_synthetic

BATCH = 1024
HELD_OUT = 20_000


@dataclass
class Task:
    name: str
    train: Tensor        # [N, d_in]
    held_out: Tensor     # [M, d_in]
    dictionary: Tensor | None  # [n_features, d_in] true features, if known
    d_sae: int
    k: int


@dataclass
class Result:
    fvu: float
    l0: float
    recovered: float | None
    seconds: float


# --- data -----------------------------------------------------------------------------------------
def synthetic(n_train: int) -> Task:
    data = make_synthetic(64, 256, n_train + HELD_OUT, p=1 / 64, seed=0)
    x = data.activations
    return Task("synthetic", x[:n_train], x[n_train:], data.dictionary, 512, 4)


def hierarchical(n_train: int) -> Task:
    from sae_lens.synthetic import (HierarchyConfig, SyntheticModel, SyntheticModelConfig,
                                    ZipfianFiringProbabilityConfig)
    from sae_lens.synthetic.synthetic_model import LowRankCorrelationConfig

    cfg = SyntheticModelConfig(
        num_features=256, hidden_dim=64,
        firing_probability=ZipfianFiringProbabilityConfig(max_prob=0.3, min_prob=0.01),
        hierarchy=HierarchyConfig(total_root_nodes=32, branching_factor=3, max_depth=2,
                                  mutually_exclusive_portion=0.5, compensate_probabilities=True),
        correlation=LowRankCorrelationConfig(rank=16, correlation_scale=0.1), seed=0)
    torch.manual_seed(0)
    model = SyntheticModel(cfg)
    with torch.no_grad():
        x = torch.cat([model.sample(50_000) for _ in range(-(-(n_train + HELD_OUT) // 50_000))])
    return Task("hierarchical", x[:n_train], x[n_train:n_train + HELD_OUT],
                model.feature_dict.feature_vectors.detach(), 512, 4)


def standin(n_train: int) -> Task:
    from sae_minimal.lm.lab import Lab

    lab = Lab("standin", fast=False, verbose=False)
    x = lab.activations().load_all()
    return Task("standin", x[:n_train], lab.eval_activations(), None, 2048, 16)


DATA = {"synthetic": synthetic, "hierarchical": hierarchical, "standin": standin}


def batches(x: Tensor, seed: int = 0):
    """[BATCH, d_in] batches in one shuffled order per epoch, forever (the same for every
    method)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0] - BATCH + 1, BATCH):
            yield x[perm[i:i + BATCH]]


def evaluate(task: Task, reconstruct: Callable[[Tensor], tuple[Tensor, Tensor]],
             W_dec: Tensor) -> tuple[float, float, float | None]:
    """(held-out FVU, L0, share of true features recovered) for reconstruct(x) -> (x̂, code)."""
    with torch.no_grad():
        x_hat, code = reconstruct(task.held_out)
        rec = None
        if task.dictionary is not None:
            rec = float((max_cosines(task.dictionary, W_dec.detach().float()) > 0.9)
                        .float().mean())
        return fvu(task.held_out, x_hat.float()), float((code != 0).sum(-1).float().mean()), rec


# --- ours -----------------------------------------------------------------------------------------
def ours(variant: str, precision: str = "fp32", seed: int = 0):
    def train(task: Task, n_tokens: int):
        d_in, d_sae, k = task.train.shape[1], task.d_sae, task.k
        sae = {"topk": lambda: sm.TopKSAE(d_in, d_sae, k=k, seed=seed),
               "batchtopk": lambda: sm.BatchTopKSAE(d_in, d_sae, k=k),
               "matryoshka": lambda: sm.MatryoshkaSAE(d_in, d_sae, k=k),
               "jumprelu": lambda: sm.JumpReLUSAE(d_in, d_sae)}[variant]()
        sm.train_sae(sae, batches(task.train), n_tokens=n_tokens, batch_size=BATCH,
                     progress=False, precision=precision)
        out = lambda x: (lambda o: (o.x_hat, o.latents))(sae(x))  # noqa: E731
        return evaluate(task, out, sae.W_dec)
    return train


# --- peers, each with its own defaults ------------------------------------------------------------
def sparsify_topk(task: Task, n_tokens: int):
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    d_in = task.train.shape[1]
    torch.manual_seed(0)
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=task.d_sae, k=task.k), device="cpu",
                      dtype=torch.float32)
    lr = 5e-3 / (task.d_sae / 2**14) ** 0.5        # sparsify.trainer's "signum" default
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    opt.train()
    for step, x in zip(range(n_tokens // BATCH), batches(task.train)):
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        sae(x, y=x, dead_mask=None).fvu.backward()  # auxk_alpha = 0 by default
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    opt.eval()  # ScheduleFree: the averaged weights are the ones to use

    def out(x):
        enc = sae.encode(x)
        code = torch.zeros(x.shape[0], task.d_sae).scatter_(-1, enc.top_indices, enc.top_acts)
        return sae.decode(enc.top_acts, enc.top_indices), code
    return evaluate(task, out, sae.W_dec)


def dictionary_learning_topk(task: Task, n_tokens: int):
    from dictionary_learning.trainers.top_k import TopKTrainer

    steps = n_tokens // BATCH
    trainer = TopKTrainer(steps=steps, activation_dim=task.train.shape[1], dict_size=task.d_sae,
                          k=task.k, layer=0, lm_name="bench", warmup_steps=min(1000, steps // 20),
                          seed=0, device="cpu")
    for step, x in zip(range(steps), batches(task.train)):
        trainer.update(step, x)
    ae = trainer.ae
    return evaluate(task, lambda x: (lambda f: (ae.decode(f), f))(ae.encode(x)),
                    ae.decoder.weight.T)


def saelens_topk(task: Task, n_tokens: int):
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training import sae_trainer
    from sae_lens.training.sae_trainer import SAETrainer

    sae_trainer.tqdm = functools.partial(sae_trainer.tqdm, disable=True)  # no bar per run
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=task.train.shape[1], d_sae=task.d_sae,
                                                k=task.k))
    cfg = SAETrainerConfig(total_training_samples=n_tokens // BATCH * BATCH,
                           train_batch_size_samples=BATCH, lr_end=3e-4,  # the default lr
                           save_final_checkpoint=False,
                           logger=LoggingConfig(log_to_wandb=False))
    SAETrainer(cfg=cfg, sae=sae, data_provider=batches(task.train),
               save_checkpoint_fn=lambda path: None).fit()
    sae.eval()
    return evaluate(task, lambda x: (lambda f: (sae.decode(f), f))(sae.encode(x)), sae.W_dec)


PEERS = {  # name: (module to import, pip package, trainer)
    "sparsify TopK": ("sparsify", "eai-sparsify", sparsify_topk),
    "dictionary_learning TopK": ("dictionary_learning", "dictionary-learning",
                                 dictionary_learning_topk),
    "SAELens TopK": ("sae_lens", "sae-lens", saelens_topk),
}


def methods(with_bf16: bool) -> dict[str, Callable]:
    found = {"ours TopK": ours("topk"), "ours BatchTopK": ours("batchtopk"),
             "ours Matryoshka": ours("matryoshka"), "ours JumpReLU": ours("jumprelu")}
    if with_bf16:  # and fp32 from another initial seed: the noise to read bf16's difference by
        found["ours TopK bf16"] = ours("topk", "bf16")
        found["ours TopK seed 1"] = ours("topk", seed=1)
    for name, (module, package, train) in PEERS.items():
        try:
            available = importlib.util.find_spec(module) is not None
        except ImportError:  # a broken install (e.g. a mismatched torchvision under transformers)
            available = False
        if available:
            found[name] = train
        else:
            print(f"(skipped {name}: `pip install {package}` to compare with it)")
    return found


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic,hierarchical,standin")
    ap.add_argument("--budgets", default="50000,100000,200000,400000")
    ap.add_argument("--quick", action="store_true", help="budgets 50k and 100k, synthetic only")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 and seed-1 rows")
    ap.add_argument("--only", default="", help="comma-separated parts of method names to run, "
                    "e.g. 'ours,sparsify'")
    args = ap.parse_args()
    names = ["synthetic"] if args.quick else args.data.split(",")
    budgets = [50_000, 100_000] if args.quick else [int(b) for b in args.budgets.split(",")]
    warnings.simplefilter("ignore")  # peers' deprecation chatter
    t_start = time.perf_counter()
    print(f"torch {torch.__version__} | {platform.processor() or platform.machine()} | "
          f"{torch.get_num_threads()} threads | batch {BATCH} | budgets "
          f"{', '.join(f'{b // 1000}k' for b in budgets)} tokens")
    found = methods(not args.no_bf16)
    if args.only:
        found = {m: f for m, f in found.items() if any(p in m for p in args.only.split(","))}
    for name in names:
        if name == "hierarchical" and importlib.util.find_spec("sae_lens") is None:
            print("(skipped hierarchical data: it is SAELens's generator, `pip install sae-lens`)")
            continue
        task = DATA[name](max(budgets))
        print(f"\n{name}: d_in {task.train.shape[1]}, d_sae {task.d_sae}, k {task.k}, "
              f"{task.train.shape[0]:,} training rows, {task.held_out.shape[0]:,} held-out")
        table: dict[str, dict[int, Result]] = {}
        header(budgets)
        for method, train in found.items():
            table[method] = {}
            for n in budgets:
                t0 = time.perf_counter()
                f, l0, rec = train(task, n)
                table[method][n] = Result(f, l0, rec, time.perf_counter() - t0)
            row(method, table[method], budgets)
        summary(table, budgets)
    print(f"\ntotal runtime {time.perf_counter() - t_start:.0f} s")


def header(budgets: list[int]) -> None:
    print(f"| method | {' | '.join(f'{b // 1000}k' for b in budgets)} | L0 | recovered | seconds |")
    print("| --- |" + " ---: |" * (len(budgets) + 3))


def row(method: str, runs: dict[int, Result], budgets: list[int]) -> None:
    last = runs[budgets[-1]]
    cells = " | ".join(fmt(runs[b].fvu) for b in budgets)
    print(f"| {method} | {cells} | {last.l0:.1f} | {fmt(last.recovered, 2)} | "
          f"{sum(r.seconds for r in runs.values()):.0f} |", flush=True)


def summary(table: dict[str, dict[int, Result]], budgets: list[int]) -> None:
    last = budgets[-1]
    peers = [m for m in table if not m.startswith("ours")]
    if peers:
        best = min(peers, key=lambda m: table[m][last].fvu)
        target = table[best][last].fvu
        print(f"tokens to reach the best peer's {last // 1000}k FVU ({target:.3f}, {best}):",
              ", ".join(f"{m} {first_budget(runs, budgets, target)}"
                        for m, runs in table.items()))
    for other in ("ours TopK bf16", "ours TopK seed 1"):
        if other in table and "ours TopK" in table:
            diffs = [table[other][b].fvu / table["ours TopK"][b].fvu - 1 for b in budgets]
            print(f"{other[5:]} vs TopK (fp32, seed 0), relative FVU difference per budget:",
                  ", ".join(f"{d:+.1%}" for d in diffs))


def first_budget(runs: dict[int, Result], budgets: list[int], target: float) -> str:
    for b in budgets:
        if runs[b].fvu <= target:
            return f"{b // 1000}k"
    return f">{budgets[-1] // 1000}k"


if __name__ == "__main__":
    main()
