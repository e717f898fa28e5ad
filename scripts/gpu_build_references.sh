#!/bin/bash
# Build the reference SAEs on a GPU machine that has torch, safetensors and transformers but no
# transformer-lens (scripts/standin_plain.py stands in for it), and leave what a short GPU lease can
# carry back under $OUT (default ./gpu_out): the log, every finished run's metrics, and the
# references in 15 MB pieces (cat refs.tar.part-* | tar x -C sae_minimal/assets/reference_saes).
# Then, here: python scripts/build_reference_saes.py --finalize.
#
# Measured on an 80 GB H100 (2026-11-26): 7 runs at a time fit (14 ran out of memory) and trained
# about 0.9M tokens a second in all, so the whole set at its budgets (each reference's T/2 and T,
# build_reference_saes.TOKENS: 2.2B tokens) takes about 40 minutes; JOBS, TOKENS (one T for all),
# RUNGS, DEADLINE (seconds) and ONLY choose less.
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# MPS lets the runs' small kernels overlap; without it they still share the GPU, in turns
if nvidia-cuda-mps-control -d 2>/dev/null; then
  timeout 60 python3 -c "import torch; torch.ones(1).cuda()" || echo quit | nvidia-cuda-mps-control
fi
WORK=${WORK:-/tmp/refs_work}; REFS=${REFS:-/tmp/refs}
timeout -k 15 $(( ${DEADLINE:-420} + 60 )) python3 scripts/build_reference_saes.py --plain-model \
  --device cuda --jobs ${JOBS:-7} ${TOKENS:+--tokens $TOKENS} --rungs ${RUNGS:-2} \
  --deadline ${DEADLINE:-420} --out "$REFS" --work "$WORK" ${ONLY:+--only $ONLY} 2>&1 \
  | grep -v "sparse/dense crossover\|if len(indices) > DOT_SHARE" | tee "$OUT/log.txt"
pkill -9 -f multiprocessing.spawn 2>/dev/null
(cd "$WORK/runs" && tar czf "$OUT/metrics.tgz" $(find . -name metrics.json))
(cd "$REFS" && tar cf /tmp/refs.tar . && split -b 15m /tmp/refs.tar "$OUT/refs.tar.part-")
ls -la "$OUT"; echo "total $(( $(date +%s) - T0 )) s"
