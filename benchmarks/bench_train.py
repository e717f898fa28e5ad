"""SAE training-step throughput: sae_minimal against SAELens (and EleutherAI's sparsify for TopK),
every variant, side by side in one process.

    python benchmarks/bench_train.py [--device cpu|cuda] [--repeats 5] [--quick] [--variants ...]
    python benchmarks/bench_train.py --crossover   # the sparse/dense crossover of this device
    python benchmarks/bench_train.py --lab         # the lab's training end to end vs the step
    python benchmarks/bench_train.py --decode      # sparse vs dense TopK decoding across d_sae
    python benchmarks/bench_train.py --auxk        # a step with AuxK computed three ways
    python benchmarks/bench_train.py --matmuls     # share of each step spent in dense matmuls
    python benchmarks/bench_train.py --concurrent  # a sweep one after the other vs two side by side

One training step = forward, loss, backward, optimiser step, and each library's own bookkeeping:
  sae_minimal: sae(x) -> loss.backward() -> project decoder grads -> clip -> Adam -> renormalise
  SAELens:     sae.training_forward_pass(TrainStepInput) -> loss.backward() -> clip -> Adam,
               plus the dead-latent counters its trainer updates each step.
  sparsify:    (TopK only, when importable: run this from a virtualenv that has it) its
               SparseCoder(x, dead_mask) -> (fvu + auxk).backward() -> project decoder grads ->
               its default optimiser (ScheduleFree sign-SGD) -> renormalise, plus its counters
               (on a GPU its forward always runs under bf16 autocast, whatever the column says).
Both see the same in-memory activations; timings are interleaved (ours, theirs, ours, ...), and of
``--repeats`` runs of ``--steps`` steps each the fastest is reported for each library: on a shared
machine the fastest run is the one least disturbed by other processes (the load average is
printed), and interleaving exposes both libraries to the same disturbances.

**Trained sparsity, not initial density.** How much work a step does depends on how many latents
fire: an untrained L1 SAE fires about half of them, a trained one a few dozen. Training each SAE
to its target L0 first would take longer than the benchmark, so each is *calibrated* to it
instead: on a separate calibration batch from the same distribution, each latent's bias (ReLU:
b_enc; Gated: b_gate) or threshold (JumpReLU: θ) is set to that latent's (1 - L0/d_sae) quantile
of its pre-activations, so every latent fires on L0/d_sae of the inputs, and the code has L0
(--l0, default 32) active latents per row on average, as TopK, BatchTopK and Matryoshka have by
construction (k = L0). SAELens's SAE gets identical weights (and JumpReLU the same bandwidth), so
both libraries do the same arithmetic. The table prints the L0 and the code density (the entries
the sparse path keeps, over B·d_sae; JumpReLU's include the lower half of its STE window) each
step really had. The activations are in the trainer's units (E||x|| = √d_in) and b_dec is set to
their mean, as ``train_sae`` does.

"dense GFLOP/s" counts the FLOPs of a dense SAE step (10·B·d_in·d_sae: encoder and decoder forward,
their weight gradients and the latent gradient), so a step that skips work can exceed the matmul
peak measured in the same run.

On a GPU (``--device cuda``) each row is timed in fp32, TF32 (``allow_tf32``) and under bf16
autocast (``--precisions`` picks). That path has not been run yet: the machine this was written on
has no GPU (written to be correct by reading: the same step under torch.autocast, synchronised).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

import sae_minimal as sm
from sae_minimal import kernels
from sae_minimal.train import make_adam

SHAPES = [(256, 4096, 4096), (768, 24576, 1024)]   # d_in, d_sae, batch
VARIANTS = ["standard", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"]
LABELS = {"standard": "ReLU (L1)", "topk": "TopK", "batchtopk": "BatchTopK",
          "jumprelu": "JumpReLU", "gated": "Gated", "matryoshka": "Matryoshka"}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int = 2048, reps: int = 20) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


@contextlib.contextmanager
def precision(device: str, mode: str):
    """fp32, tf32 (TF32 matmuls) or bf16 (autocast) for the steps run inside."""
    if not device.startswith("cuda"):
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --- the data and the calibration ---------------------------------------------------------------
def activations(batch: int, d_in: int, device: str, seed: int) -> torch.Tensor:
    """[batch, d_in] Gaussian activations with a mean offset, in training units (E||x|| = √d_in)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d_in, generator=g) + 0.5
    return (x * d_in**0.5 / x.norm(dim=-1).mean()).to(device)


def make_ours(variant: str, d_in: int, d_sae: int, l0: int, device: str) -> sm.BaseSAE:
    k = dict(k=l0)
    make = {"standard": lambda: sm.ReLUSAE(d_in, d_sae),
            "topk": lambda: sm.TopKSAE(d_in, d_sae, **k),
            "batchtopk": lambda: sm.BatchTopKSAE(d_in, d_sae, **k),
            "jumprelu": lambda: sm.JumpReLUSAE(d_in, d_sae),
            "gated": lambda: sm.GatedSAE(d_in, d_sae),
            "matryoshka": lambda: sm.MatryoshkaSAE(d_in, d_sae, **k)}[variant]
    return make().to(device).train()


@torch.no_grad()
def calibrate(sae: sm.BaseSAE, x_cal: torch.Tensor, l0: int) -> None:
    """Set b_dec to the data mean and each latent's bias or threshold so that it fires on
    l0/d_sae of x_cal (module docstring). TopK-family SAEs have their L0 by construction."""
    sae.b_dec.copy_(x_cal.mean(0))
    xw = (x_cal - sae.b_dec) @ sae.W_enc                     # [N, d_sae]
    q = torch.quantile(xw, 1 - l0 / sae.d_sae, dim=0)         # each latent's firing point
    if isinstance(sae, sm.ReLUSAE):
        sae.b_enc.copy_(-q)
    elif isinstance(sae, sm.JumpReLUSAE):
        sae.log_threshold.copy_(q.clamp_min(1e-3).log())      # b_enc stays 0
    elif isinstance(sae, sm.GatedSAE):
        sae.b_gate.copy_(-q)                                  # r_mag = b_mag = 0: f = ReLU(xw)


def make_theirs(variant: str, ours: sm.BaseSAE, l0: int, device: str):
    """SAELens's training SAE of the same architecture, with our (calibrated) weights."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    shape = dict(d_in=ours.d_in, d_sae=ours.d_sae, device=device)
    cls, cfg = {
        "standard": (StandardTrainingSAE, lambda: StandardTrainingSAEConfig(**shape)),
        "topk": (TopKTrainingSAE, lambda: TopKTrainingSAEConfig(k=l0, **shape)),
        "batchtopk": (BatchTopKTrainingSAE, lambda: BatchTopKTrainingSAEConfig(k=l0, **shape)),
        "jumprelu": (JumpReLUTrainingSAE, lambda: JumpReLUTrainingSAEConfig(
            jumprelu_bandwidth=ours.bandwidth, **shape)),
        "gated": (GatedTrainingSAE, lambda: GatedTrainingSAEConfig(**shape)),
        "matryoshka": (MatryoshkaBatchTopKTrainingSAE, lambda: MatryoshkaBatchTopKTrainingSAEConfig(
            k=l0, matryoshka_widths=list(getattr(ours, "prefix_sizes", [])), **shape)),
    }[variant]
    sae = cls(cfg()).to(device).train()
    with torch.no_grad():
        theirs = dict(sae.named_parameters())
        for name, value in ours.sae_lens_weights().items():
            if name in theirs and name != "threshold":
                theirs[name].copy_(value)
        if variant == "jumprelu":
            sae.threshold.copy_(ours.threshold)
    return sae


# --- one training step of each library ------------------------------------------------------------
def step_ours(sae: sm.BaseSAE, lr: float = 1e-5):
    opt = make_adam(sae.parameters(), lr=lr)     # the optimiser train_sae uses (small LR: the
    stats = {"l0": [], "density": []}            # calibrated sparsity barely moves while timed)

    def step(x):
        out = sae(x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.normalize_decoder()
        return out
    step.stats = stats

    def measured(x):
        out = step(x)
        with torch.no_grad():
            stats["l0"].append(float((out.latents > 0).sum()) / x.shape[0])
            enc = sae.encode_flat(x)
            n = sum(code.values.numel() for code in (enc.sparse, enc.probe) if code is not None)
            n = n if enc.sparse is not None else float("nan")     # nan: the dense path ran
            stats["density"].append(n / (x.shape[0] * sae.d_sae))
    step.measured = measured
    return step


def step_saelens(sae, d_sae: int, device: str):
    from sae_lens.saes.sae import TrainStepInput

    opt = torch.optim.Adam(sae.parameters(), lr=1e-5)
    coefficients = {name: c.value if hasattr(c, "value") else c
                    for name, c in sae.get_coefficients().items()}
    since_fired = torch.zeros(d_sae, device=device)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def step(x):
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients=coefficients, dead_neuron_mask=dead, n_training_steps=0,
            is_logging_step=False))
        with torch.no_grad():
            did_fire = out.feature_acts.bool().any(0)
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return out.loss
    return step


def step_sparsify(ours: sm.BaseSAE, l0: int, device: str):
    """EleutherAI sparsify's TopK step with its defaults, or None when sparsify is missing."""
    try:
        from schedulefree import ScheduleFreeWrapper
        from sparsify import SparseCoder, SparseCoderConfig
        from sparsify.sign_sgd import SignSGD
    except ImportError:
        return None
    sae = SparseCoder(ours.d_in, SparseCoderConfig(num_latents=ours.d_sae, k=l0), device=device)
    with torch.no_grad():
        sae.encoder.weight.copy_(ours.W_enc.T)
        sae.encoder.bias.copy_(ours.b_enc)
        sae.W_dec.copy_(ours.W_dec)
        sae.b_dec.copy_(ours.b_dec)
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(),
                                            lr=5e-3 / (ours.d_sae / 2**14) ** 0.5)]),
                              momentum=0.95)
    opt.train()
    since_fired = torch.zeros(ours.d_sae, dtype=torch.long, device=device)

    def step(x):
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=since_fired > 10_000_000)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[out.latent_indices.flatten()] = 0
        return out.fvu
    return step


def time_steps(step, x, n: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step(x)
    sync(device)
    return (time.perf_counter() - t0) / n


def interleaved(steps: dict, x, args) -> dict[str, float]:
    """Seconds per step of each of ``steps``: the fastest of ``--repeats`` rounds, in turn."""
    for step in steps.values():
        step(x)                                  # warm-up
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(time_steps(step, x, args.steps, args.device))
    return {name: min(t) for name, t in times.items()}


def bench_train(args) -> None:
    peak = matmul_peak(args.device)
    load = open("/proc/loadavg").read().split()[:3] if args.device == "cpu" else []
    print(f"torch {torch.__version__} | device {args.device} | {torch.get_num_threads()} threads | "
          f"matmul peak {peak:.0f} GFLOP/s (fp32, 2048^3) | sparse/dense crossover "
          f"{kernels.sparse_max_density(args.device):.3f}"
          + (f" | load average {' '.join(load)}" if load else "") + "\n")
    modes = args.precisions.split(",") if args.device.startswith("cuda") else ["fp32"]
    header = (f"{'variant':<11}{'d_in x d_sae':>14}{'batch':>6}{'prec':>5}{'L0':>6}{'density':>9}"
              f"{'ours tok/s':>12}{'SAELens':>10}{'ratio':>7}{'sparsify':>10}{'ratio':>7}"
              f"{'dense GFLOP/s':>15}" + ("  load" if args.device == "cpu" else ""))
    print(header)
    print("-" * len(header))
    shapes = SHAPES[:1] if args.quick else SHAPES
    for d_in, d_sae, batch in shapes:
        x = activations(batch, d_in, args.device, seed=0)
        x_cal = activations(8192, d_in, args.device, seed=1)
        for variant in args.variants.split(","):
            torch.manual_seed(0)
            sae = make_ours(variant, d_in, d_sae, args.l0, args.device)
            calibrate(sae, x_cal, args.l0)
            steps = {"ours": step_ours(sae),
                     "saelens": step_saelens(make_theirs(variant, sae, args.l0, args.device),
                                             d_sae, args.device)}
            if variant == "topk" and not args.no_sparsify:
                sparsify_step = step_sparsify(sae, args.l0, args.device)
                if sparsify_step is not None:
                    steps["sparsify"] = sparsify_step
            for mode in modes:
                load = open("/proc/loadavg").read().split()[0] if args.device == "cpu" else ""
                with precision(args.device, mode):
                    steps["ours"].measured(x)
                    t = interleaved(steps, x, args)
                stats = steps["ours"].stats
                gflops = 10 * batch * d_in * d_sae / t["ours"] / 1e9
                row = (f"{LABELS[variant]:<11}{f'{d_in} x {d_sae}':>14}{batch:>6}{mode:>5}"
                       f"{statistics.mean(stats['l0']):>6.1f}"
                       f"{statistics.mean(stats['density']):>9.4f}"
                       f"{batch / t['ours']:>12,.0f}{batch / t['saelens']:>10,.0f}"
                       f"{t['saelens'] / t['ours']:>6.2f}x")
                row += (f"{batch / t['sparsify']:>10,.0f}{t['sparsify'] / t['ours']:>6.2f}x"
                        if "sparsify" in t else f"{'':>17}")
                print(row + f"{gflops:>15.0f}" + (f"{load:>6}" if load else ""), flush=True)
            del steps, sae


def bench_lab(args) -> None:
    """End to end: the lab's training (``train_sae`` over ``ActivationStore.batches``, as
    ``Lab.sae`` runs it: TopK k 16 on the stand-in's 256 x 2048) against the isolated step on one
    in-memory batch, interleaved; and the share of the loop spent waiting for data."""
    from sae_minimal.lm.lab import Lab, lab_lr

    lab = Lab("standin", fast=False, verbose=False)   # caches the activations on first use
    store = lab.activations()
    lr = lab_lr(lab.d_sae)                                  # the rate Lab.sae trains at
    n_steps = args.lab_tokens // 1024
    x = store.load_all(1024)
    x = x * (lab.d_in ** 0.5 / x.norm(dim=-1).mean())       # training units, as train_sae feeds it
    print(f"{store}\nTopK k 16, {lab.d_in} x {lab.d_sae}, batch 1024, lr {lr:.2e}, "
          f"{n_steps * 1024:,} tokens per run\n")
    rows = []
    for r in range(args.repeats):
        step = step_ours(sm.TopKSAE(lab.d_in, lab.d_sae, k=16, seed=r).train(), lr=lr)
        step(x)
        isolated = 1024 / time_steps(step, x, n_steps, args.device)
        sae = sm.TopKSAE(lab.d_in, lab.d_sae, k=16, seed=r)
        h = sm.train_sae(sae, store.batches(1024, n_tokens=n_steps * 1024, seed=r),
                         n_tokens=n_steps * 1024, batch_size=1024, lr=lr, seed=r, progress=False)
        rows.append((isolated, n_steps * 1024 / h["seconds"], h["data_seconds"] / h["seconds"]))
        e2e, data = rows[-1][1:]
        print(f"run {r}: isolated step {isolated:,.0f} tok/s, lab training {e2e:,.0f} tok/s "
              f"({e2e / isolated:.0%}), data path {data:.1%} of the loop", flush=True)
    iso, e2e = max(r[0] for r in rows), max(r[1] for r in rows)
    print(f"\nbest of {len(rows)} (the least disturbed run of each): lab training at "
          f"{e2e / iso:.0%} of the isolated step's throughput ({e2e:,.0f} vs {iso:,.0f} tok/s); "
          f"data path {statistics.median(r[2] for r in rows):.1%} of the loop (median)")


def bench_concurrent(args) -> None:
    """A small sweep as the lab trains it (4 SAEs of 256 x 2048 on the stand-in's cached
    activations, ``--lab-tokens`` each): one after the other on all of torch's threads, against
    ``train.train_concurrently`` (two side by side, each on half the threads), interleaved over
    ``--repeats``; and whether both give the same weights."""
    from sae_minimal.lm.lab import Lab, lab_lr
    from sae_minimal.train import train_concurrently

    lab = Lab("standin", fast=False, verbose=False)
    store = lab.activations()
    lr = lab_lr(lab.d_sae)
    makes = [lambda: sm.TopKSAE(lab.d_in, lab.d_sae, k=16, seed=0),
             lambda: sm.TopKSAE(lab.d_in, lab.d_sae, k=32, seed=0),
             lambda: sm.BatchTopKSAE(lab.d_in, lab.d_sae, k=16, seed=0),
             lambda: sm.JumpReLUSAE(lab.d_in, lab.d_sae, l0_coeff=1.0, seed=0)]

    def job(make):
        def run():
            sae = make()
            n = args.lab_tokens
            sm.train_sae(sae, store.batches(1024, n_tokens=n), n_tokens=n, batch_size=1024, lr=lr,
                         progress=False)
            return sae
        return run

    print(f"{len(makes)} SAEs (TopK k 16 and 32, BatchTopK, JumpReLU; {lab.d_in} x {lab.d_sae}), "
          f"{args.lab_tokens:,} tokens each, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    times = {"one after the other": [], "two side by side": []}
    for r in range(args.repeats):
        start = time.perf_counter()
        alone = [job(make)() for make in makes]
        times["one after the other"].append(time.perf_counter() - start)
        start = time.perf_counter()
        together = train_concurrently([job(make) for make in makes], workers=2)
        times["two side by side"].append(time.perf_counter() - start)
        same = all(torch.equal(a.state_dict()[k], b.state_dict()[k])
                   for a, b in zip(alone, together) for k in a.state_dict())
        print(f"run {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items())
              + f"; same weights: {same}", flush=True)
    seq, par = min(times["one after the other"]), min(times["two side by side"])
    print(f"\nbest of {args.repeats}: {seq:.1f} s one after the other, {par:.1f} s two side by "
          f"side ({seq / par:.2f}x)")


def bench_crossover(args) -> None:
    """Print the sparse and dense step times behind ``kernels.measure_sparse_crossover``."""
    print(f"ReLU SAE step (forward + backward), d_in 768, d_sae 16384, batch 2048, {args.device}\n")
    crossover = kernels.measure_sparse_crossover(args.device, verbose=True)
    print(f"\ncrossover: sparse pays up to a code density of {crossover:.4f} on {args.device} "
          f"(kernels.SPARSE_MAX_DENSITY holds {kernels.SPARSE_MAX_DENSITY.get('cpu')} for cpu)")


def bench_matmul_share(args) -> None:
    """How much of each step is dense matmuls (aten::mm / addmm), at 768 x 24576."""
    import torch.profiler as tp

    d_in, d_sae, batch = SHAPES[-1]
    x = activations(batch, d_in, args.device, seed=0)
    x_cal = activations(4096, d_in, args.device, seed=1)
    print(f"d_in {d_in} x d_sae {d_sae}, batch {batch}, calibrated to L0 {args.l0}\n")
    for variant in args.variants.split(","):
        sae = make_ours(variant, d_in, d_sae, args.l0, args.device)
        calibrate(sae, x_cal, args.l0)
        step = step_ours(sae)
        step(x), step(x)
        with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(3):
                step(x)
            total = (time.perf_counter() - t0) / 3
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        mm = sum(e.self_cpu_time_total for e in ops if e.key in ("aten::mm", "aten::addmm")) / 3e6
        top = ", ".join(f"{e.key.removeprefix('aten::')} {e.self_cpu_time_total / 3e6 / total:.0%}"
                        for e in ops[:5])
        print(f"{LABELS[variant]:<11} step {total:5.2f} s; matmuls {mm / total:4.0%}; "
              f"top ops: {top}")


def median_seconds(fns: dict, args) -> dict[str, float]:
    """{name: median seconds of one call of fn} over ``args.repeats`` timings of 3 calls each,
    after a warm-up call."""
    t = {}
    for name, fn in fns.items():
        fn()
        t[name] = statistics.median(time_steps(lambda _: fn(), None, 3, args.device)
                                    for _ in range(args.repeats))
    return t


def bench_decode(args) -> None:
    """Forward + backward of the decoder alone, sparse (embedding bag) vs dense, across d_sae."""
    d_in, k, batch = 768, 32, 1024
    print(f"TopK decoding, d_in {d_in}, k {k}, batch {batch}: forward+backward time per step\n")
    print(f"{'d_sae':>7}{'k/d_sae':>9}{'dense ms':>10}{'sparse ms':>11}{'speed-up':>10}")
    for d_sae in (64, 128, 256, 512, 1024, 4096, 24576, 65536):
        W = torch.randn(d_sae, d_in, device=args.device, requires_grad=True)
        pre = torch.randn(batch, d_sae, device=args.device)
        values, indices = pre.topk(k, dim=-1)
        values = values.relu().requires_grad_()

        def dense():
            z = torch.zeros(batch, d_sae, device=args.device).scatter(-1, indices, values)
            (z @ W).sum().backward()

        def sparse():
            kernels.sparse_decode(indices, values, W).sum().backward()
        t = median_seconds({"dense": dense, "sparse": sparse}, args)
        print(f"{d_sae:>7}{k / d_sae:>9.4f}{t['dense'] * 1e3:>10.1f}{t['sparse'] * 1e3:>11.1f}"
              f"{t['dense'] / t['sparse']:>9.1f}x")


def _masked_auxk(sae, x, x_hat, pre, k_aux, coeff):
    """``topk.auxk_loss`` as the paper writes it: the top k_aux of pre with every live column set to
    -inf (so pre gets a dense [B, d_sae] gradient)."""
    from sae_minimal.base import mse
    dead = sae.dead_mask()
    n_dead, e = int(dead.sum()), (x - x_hat).detach()
    if n_dead == 0:
        return pre.new_zeros(())
    values, latent = pre.masked_fill(~dead, float("-inf")).topk(min(k_aux, n_dead), -1)
    e_hat = kernels.sparse_decode(latent, values.relu(), sae.W_dec)
    var = lambda v: mse(v.mean(0).expand_as(v), v)  # noqa: E731
    return coeff * min(n_dead / k_aux, 1.0) * var(x).detach() / var(e) * mse(e_hat, e)


def bench_auxk(args) -> None:
    """A TopK SAE's training step (forward + backward) with AuxK computed three ways, across the
    number of dead latents: the masked formula (every live column of pre set to -inf, then the top
    k_aux of all d_sae), the top k_aux of the dead columns gathered from pre (both give pre a dense
    gradient, which the encoder's backward scans for its non-zeros), and ``topk.auxk_loss`` (the
    same entries, their gradient sent to the encoder from the entries: ``kernels.pre_entries``).
    Row "0 dead" is the step without AuxK.

    On a trained SAE and real inputs (the shipped reference topk-k16-8192 on a batch of the
    stand-in's activations): the decoder's backward and AuxK's residual depend on which latents
    fire, which a random initialisation on Gaussian inputs gets wrong."""
    from sae_minimal import topk
    from sae_minimal.lm.lab import Lab
    from sae_minimal.lm.references import load_reference

    batch, k_aux = 1024, 128
    sae = load_reference("topk-k16-8192", device=args.device)
    sae.k_aux = k_aux
    sae.train()
    x = Lab("standin", fast=False, verbose=False).activations().load_all(batch).to(args.device)
    print(f"TopK (k {sae.k}) + AuxK, the reference topk-k16-8192 ({sae.d_in} x {sae.d_sae}, "
          f"{sae.trained_tokens:,} training tokens), a batch of {batch} stand-in activations, "
          f"k_aux {k_aux}: forward + backward per step\n")
    print(f"{'dead':>7}{'masked ms':>11}{'dead cols ms':>14}{'pre_entries ms':>16}{'speed-up':>10}")
    d_sae = sae.d_sae
    # each way: what it puts into topk for the step (the dead columns gathered from pre itself:
    # auxk_loss with a plain gather in place of pre_entries; the package's own: no change)
    ways = {"masked": ("auxk_loss", _masked_auxk),
            "dead": ("pre_entries", lambda pre, rows, latent, *_: pre[rows, latent]),
            "entries": ("pre_entries", kernels.pre_entries)}

    def step(way):
        def run():
            sae.tokens_since_fired.copy_(counters)   # the same dead latents in every call
            name, swap = ways[way]
            package = getattr(topk, name)
            setattr(topk, name, swap)
            try:
                sae(x).loss.backward()
            finally:
                setattr(topk, name, package)
        return run
    for n_dead in (0, 8, 80, 800):
        sae.tokens_since_fired.zero_()
        sae.tokens_since_fired[torch.randperm(d_sae)[:n_dead]] = 10**12
        counters = sae.tokens_since_fired.clone()
        t = median_seconds({way: step(way) for way in ways}, args)
        print(f"{n_dead:>7}{t['masked'] * 1e3:>11.1f}{t['dead'] * 1e3:>14.1f}"
              f"{t['entries'] * 1e3:>16.1f}{t['dead'] / t['entries']:>9.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--l0", type=int, default=32, help="target L0 (and k) of every SAE")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--precisions", default="fp32,tf32,bf16", help="on cuda: fp32, tf32, bf16")
    ap.add_argument("--quick", action="store_true", help="only the small shape")
    ap.add_argument("--no-sparsify", action="store_true", help="skip sparsify even if importable")
    ap.add_argument("--crossover", action="store_true", help="the device's sparse/dense crossover")
    ap.add_argument("--lab", action="store_true", help="the lab's training vs the isolated step")
    ap.add_argument("--lab-tokens", type=int, default=100_000, help="tokens per --lab run")
    ap.add_argument("--decode", action="store_true", help="sparse vs dense TopK decoding")
    ap.add_argument("--auxk", action="store_true", help="a step with AuxK three ways")
    ap.add_argument("--matmuls", action="store_true", help="profile the share of dense matmuls")
    ap.add_argument("--concurrent", action="store_true",
                    help="a lab sweep one after the other vs two side by side (--lab-tokens each)")
    args = ap.parse_args()
    (bench_crossover if args.crossover else bench_lab if args.lab else bench_decode if args.decode
     else bench_auxk if args.auxk else bench_matmul_share if args.matmuls
     else bench_concurrent if args.concurrent else bench_train)(args)


if __name__ == "__main__":
    main()
