"""SAE training-step throughput: sae_minimal against SAELens, side by side, in one process.

    python benchmarks/bench_train.py [--device cpu|cuda] [--repeats 5] [--quick]
    python benchmarks/bench_train.py --decode        # sparse vs dense TopK decoding, crossover and speed-up
    python benchmarks/bench_train.py --matmuls       # share of the step in matmuls, and their GFLOP/s

One training step = forward, loss, backward, optimiser step, and each library's own bookkeeping:
  sae_minimal: sae(x) -> loss.backward() -> project decoder grads -> clip -> Adam -> renormalise decoder
  SAELens:     sae.training_forward_pass(TrainStepInput) -> loss.backward() -> clip -> Adam, plus the
               dead-latent counters its trainer updates each step.
Both see the same in-memory activations; timings are interleaved (ours, theirs, ours, ...) and the median
of ``--repeats`` runs of ``--steps`` steps is reported. "dense GFLOP/s" counts the FLOPs of a dense SAE step
(10·B·d_in·d_sae: encoder and decoder forward, their weight gradients and the latent gradient), so a step
that skips work (sparse decoding) can exceed the matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import sae_minimal as sm
from sae_minimal.train import make_adam

SHAPES = [(256, 4096, 32, 4096), (768, 24576, 32, 1024)]   # d_in, d_sae, k, batch


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


def ours(variant: str, d_in: int, d_sae: int, k: int, device: str):
    sae = {"topk": lambda: sm.TopKSAE(d_in, d_sae, k=k), "jumprelu": lambda: sm.JumpReLUSAE(d_in, d_sae),
           "standard": lambda: sm.ReLUSAE(d_in, d_sae)}[variant]().to(device).train()
    opt = make_adam(sae.parameters(), lr=1e-4)   # the optimiser train_sae uses

    def step(x):
        out = sae(x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.normalize_decoder()
        return out.loss
    return step


def theirs(variant: str, d_in: int, d_sae: int, k: int, device: str):
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    cls, cfg = {"topk": (TopKTrainingSAE, TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=device)),
                "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device)),
                "standard": (StandardTrainingSAE, StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device))}[variant]
    sae = cls(cfg).to(device).train()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    coefficients = {name: c.value if hasattr(c, "value") else c for name, c in sae.get_coefficients().items()}
    since_fired = torch.zeros(d_sae, device=device)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def step(x):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
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


def time_steps(step, x, n: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step(x)
    sync(device)
    return (time.perf_counter() - t0) / n


def bench_train(args) -> None:
    peak = matmul_peak(args.device)
    print(f"torch {torch.__version__} | device {args.device} | {torch.get_num_threads()} threads | "
          f"matmul peak {peak:.0f} GFLOP/s (fp32, 2048^3)\n")
    header = (f"{'variant':<9}{'d_in x d_sae':>14}{'batch':>7}{'ours tok/s':>12}{'SAELens tok/s':>15}{'ratio':>7}"
              f"{'ours dense GFLOP/s':>20}{'% peak':>8}")
    print(header)
    print("-" * len(header))
    shapes = SHAPES[:1] if args.quick else SHAPES
    for d_in, d_sae, k, batch in shapes:
        x = torch.randn(batch, d_in, device=args.device) * 3 + 1
        for variant in ("topk", "jumprelu", "standard"):
            torch.manual_seed(0)
            a, b = ours(variant, d_in, d_sae, k, args.device), theirs(variant, d_in, d_sae, k, args.device)
            a(x), b(x)  # warm-up
            ta, tb = [], []
            for _ in range(args.repeats):
                ta.append(time_steps(a, x, args.steps, args.device))
                tb.append(time_steps(b, x, args.steps, args.device))
            t_ours, t_theirs = statistics.median(ta), statistics.median(tb)
            gflops = 10 * batch * d_in * d_sae / t_ours / 1e9
            print(f"{variant:<9}{f'{d_in} x {d_sae}':>14}{batch:>7}{batch / t_ours:>12,.0f}{batch / t_theirs:>15,.0f}"
                  f"{t_theirs / t_ours:>6.2f}x{gflops:>20.0f}{gflops / peak:>8.0%}")
            del a, b


def bench_matmul_share(args) -> None:
    """How fast do the dense parts run? Profile one step and time the matmuls (aten::mm / addmm) alone."""
    import torch.profiler as tp

    d_in, d_sae, k, batch = SHAPES[-1]
    x = torch.randn(batch, d_in, device=args.device)
    # matmuls a step executes, in units of 2·B·d_in·d_sae FLOPs: encoder and decoder forward, W_enc, W_dec and
    # latent gradients (b_dec's gradient is a vector product). TopK decodes sparsely and accumulates W_enc's
    # gradient from the selected columns, so only the encoder forward is a dense matmul.
    units = {"standard": 5, "jumprelu": 5, "topk": 1}
    print(f"d_in {d_in} x d_sae {d_sae}, batch {batch}\n")
    reps = 3
    for variant, n in units.items():
        step = ours(variant, d_in, d_sae, k, args.device)
        step(x), step(x)
        peak = matmul_peak(args.device)  # re-measured next to each variant: this machine's speed drifts
        with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(reps):
                step(x)
            total = (time.perf_counter() - t0) / reps
        mm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm")) / 1e6 / reps
        rate = n * 2 * batch * d_in * d_sae / mm / 1e9
        print(f"{variant:<9} step {total:5.2f} s; matmuls {mm:5.2f} s ({mm / total:4.0%} of the step) at "
              f"{rate:4.0f} GFLOP/s = {rate / peak:4.0%} of the {peak:.0f} GFLOP/s peak measured just before")


def bench_decode(args) -> None:
    """Forward + backward of the decoder alone, sparse (embedding bag) vs dense, across d_sae."""
    from sae_minimal.kernels import sparse_decode

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
            sparse_decode(indices, values, W).sum().backward()
        t = {}
        for name, fn in (("dense", dense), ("sparse", sparse)):
            fn()
            t[name] = statistics.median(time_steps(lambda _: fn(), None, 3, args.device) for _ in range(args.repeats))
        print(f"{d_sae:>7}{k / d_sae:>9.4f}{t['dense'] * 1e3:>10.1f}{t['sparse'] * 1e3:>11.1f}"
              f"{t['dense'] / t['sparse']:>9.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="only the small shape")
    ap.add_argument("--decode", action="store_true", help="benchmark sparse vs dense TopK decoding instead")
    ap.add_argument("--matmuls", action="store_true", help="profile how fast the dense parts (matmuls) run")
    args = ap.parse_args()
    (bench_decode if args.decode else bench_matmul_share if args.matmuls else bench_train)(args)


if __name__ == "__main__":
    main()
