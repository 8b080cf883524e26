#!/usr/bin/env bash
# The GPU checks of one lent-device session, as one prepared run (device time is scarce):
#   1. bench.py on the GPU, the paper's protocol, batch sweep: the GPU section of
#      docs/benchmarks.md (issue 9) — written into $OUT, copied back by hand;
#   2. scripts/conv_speed.py on the GPU: does any conv formulation beat XLA's own there? The
#      dispatch table says "lax" on GPU (issue 10);
#   3. the conv and RM-equivalence tests on the GPU (float32: TF32 must not leak into them).
# Seen on an H200 (2026-11-29): 1. takes ~250 s, 3. ~110 s; 2. needs more than 100 s (each
# call is timed singly, so sub-millisecond layers measure dispatch, not the kernel).
# Uses the device image's python3 and packages (jax/flax/optax/orbax/chex are there).
#   usage (on the device): OUT=/some/dir bash scripts/gpu_checks.sh
set -u
# PYTHONPATH: rmjax is not pip-installed there. No preallocation: pytest -n 4 runs 4 processes
# that would each take 75% of the card and fail with CUDA out-of-memory (seen on an H200).
export PYTHONUNBUFFERED=1 PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT/bench"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

start=$(date +%s)
timeout "${BENCH_TIMEOUT:-270}" python3 bench.py --batch_sizes=1,8,32,128 --write_docs \
  --out_dir="$OUT/bench" >"$OUT/bench.log" 2>&1
echo "bench rc=$? in $(($(date +%s) - start)) s"
tail -n 45 "$OUT/bench.log"
cp docs/benchmarks.md docs/benchmarks_gpu.png "$OUT/" 2>/dev/null

start=$(date +%s)
timeout "${CONV_TIMEOUT:-150}" python3 scripts/conv_speed.py --no_torch --repeats=5 \
  >"$OUT/conv_speed_gpu.md" 2>&1
echo "conv_speed rc=$? in $(($(date +%s) - start)) s"
tail -n 40 "$OUT/conv_speed_gpu.md"

start=$(date +%s)
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -x -p no:cacheprovider -n 4 \
  tests/conv_test.py tests/convert_test.py tests/structured_test.py >"$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$? in $(($(date +%s) - start)) s"
tail -n 15 "$OUT/pytest_gpu.log"
