#!/bin/bash
# Train reference-SAE runs on a GPU machine that has torch, safetensors and transformers but no
# transformer-lens (scripts/standin_plain.py stands in for it), and leave what a short GPU lease can
# carry back under $OUT (default ./gpu_out): the log, a sample of the held-out activations computed
# there (to compare with the CPU's), and every finished run (weights and metrics, no checkpoints:
# they resume only on the activations they began with) in 15 MB pieces. Then, here:
#   cat $OUT/runs.tar.part-* | tar x -C reference_runs/runs   # the CPU build's --work folder
#   python scripts/build_reference_saes.py --from-ladders ...  # trains only what is still missing
# (then commit the finished runs there, as its README says). Budgets below T that the card's
# ladders hold are not trained here either (--from-ladders).
# The card records each run's machine (its metrics' "hardware").
#
# Measured on an 80 GB H100 (2026-11-26): 7 runs at a time fit (14 ran out of memory, before
# evaluate_sae stopped keeping [n, d_sae] latents) and trained about 0.9M tokens a second in all.
# 2026-11-27, same GPU: 8 runs at once (JumpReLU-2048, TopK-8192, Matryoshka-8192) trained about
# 1M tokens a second in all, but each run more slowly than beside 6 others (JumpReLU 188k tokens/s
# against 333k); DEADLINE=515 fit one 600-second command (538 s from start to the last piece).
# A run of 128M tokens needs 256k tokens/s to finish inside one command: at these speeds those are
# CPU work (a checkpoint resumes only on the activations it began with, so not on the CPU).
# 2026-11-28, same GPU: TopK-8192 at 128M and Matryoshka-8192 at 64M, the two alone (JOBS=2),
# did not finish by DEADLINE=540, so each ran under 250k and 125k tokens/s: under 1.9x and 1.5x
# their speed beside 7 others. Fewer runs side by side barely speed each up (likely bound by its
# own process: Python and kernel launches at batch 1024). Both also ran on the dense path, which
# may have cost some of it: measuring the sparse/dense crossover side by side ran out of memory
# (since then an out-of-memory there counts as "sparse loses" instead). Under a deadline the runs
# now checkpoint every DEADLINE/3 seconds, so the log ends with how far each got.
# Since then AuxK no longer scans a dense [B, d_sae] gradient (and syncs with the host) in each
# step's backward (kernels.pre_entries); other host syncs per step remain (a nonzero/all() per
# decode, the loss check): profile them on the next lease. On 2026-11-28 the CPU build's finished
# runs were lost with its machine (reference_runs/README.md: what is left). At the speeds above,
# the 128M runs of the 2048- and 512-wide TopK, BatchTopK and L1 likely fit one command (JumpReLU
# at 2048 latents trained 333k tokens/s beside 6 others: 128M in 384 s); JumpReLU and
# Matryoshka-2048 at 256M, BatchTopK-2048 at 256M (its T since 2026-11-28), JumpReLU's 512M and
# Matryoshka-8192 at 256M (its T since 2026-11-29) and Matryoshka-2048's 512M (its T since session
# 26, 2026-11-29) do not. What is still to train on 2026-11-29 (session 26):
# ONLY="matryoshka-k16-8192 matryoshka-k16-2048 batchtopk-k16-2048 jumprelu-2048" (8 runs).
# JOBS, TOKENS (one T for all), RUNGS, DEADLINE (seconds), ONLY and DEVICE choose.
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# MPS lets the runs' small kernels overlap; without it they still share the GPU, in turns
if nvidia-cuda-mps-control -d 2>/dev/null; then
  timeout 60 python3 -c "import torch; torch.ones(1).cuda()" || echo quit | nvidia-cuda-mps-control
fi
WORK=${WORK:-/tmp/refs_work}; REFS=${REFS:-/tmp/refs}
# the build stops its workers itself; past the deadline, timeout stops the whole process group
# (no pkill of every multiprocessing worker: on a shared machine that kills other builds too)
timeout -k 15 $(( ${DEADLINE:-420} + 60 )) python3 scripts/build_reference_saes.py --plain-model \
  --device ${DEVICE:-cuda} --jobs ${JOBS:-7} ${TOKENS:+--tokens $TOKENS} --rungs ${RUNGS:-2} \
  --deadline ${DEADLINE:-420} --out "$REFS" --work "$WORK" ${ONLY:+--only $ONLY} --from-ladders 2>&1 \
  | awk '!($0 in seen) { seen[$0]; print; fflush() }' | tee "$OUT/log.txt"   # a warning once, not per run
python3 -c "import torch; torch.save(torch.load('$WORK/held_out.pt')['x_eval'][:4096].clone(), \
  '$OUT/x_eval_head.pt')"
# smallest references first: if the pieces pass what comes back (64 MiB), the tar's tail is lost
(cd "$WORK/runs" && tar cf /tmp/runs.tar --exclude=training_checkpoint.pt $(du -s * | sort -n | cut -f2) \
  && split -b 15m /tmp/runs.tar "$OUT/runs.tar.part-")
ls -la "$OUT"; echo "total $(( $(date +%s) - T0 )) s"
