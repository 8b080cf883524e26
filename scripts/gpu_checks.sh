#!/usr/bin/env bash
# The GPU checks of one lent-device session (issue 22), as one prepared run of ~9 minutes:
# Table 3 at ImageNet scale, rmjax beside PyTorch on the same GPU. Steps, most important first,
# each a bench.py run under its own `timeout` (bench.py saves its JSON, Markdown and docs
# section after every row, so a step cut short keeps what it measured):
#   1. imagenet   float32 inference, 224x224, batch 128: ResNet-50/101/152, RMNet-50 and the
#                 RMNeXt presets (residual, plain dense / structured / default), PyTorch eager
#                 twins beside each (docs section gpu-imagenet; Table 3's ratios)
#   2. train      training step, bfloat16 compute (float32 master weights) beside PyTorch AMP:
#                 ResNet-50, RMNeXt-50x6_32 (gpu-train)
#   3. precision  max |logit diff| plain vs residual at default (TF32) and "highest" precision:
#                 RMNet-50, RMNeXt-41x4_8 and 50x6_32 plain (gpu-precision)
#   4. bf16       bfloat16 inference, ResNet-50 and RMNeXt-50x6_32 groups, dense (gpu-imagenet-bf16)
#   5. compile    torch.compile (mode default) of ResNet-50's and RMNeXt-41x4_8 plain's twins
#                 beside eager and rmjax (gpu-compile)
#   6. layers     dense vs structured conv by conv, RMNet-50 and RMNeXt-50x6_32 plain: what
#                 rmjax.models.structured.MIN_SAVING["gpu"] is set from (gpu-layers)
# Protocol, cut to fit (each section's header says so): 5 warm-up batches, then 2 x 10 timed
# batches (the paper: 50 + 50), turns taken with PyTorch. Estimates on an H200 (XLA compiles a
# ResNet-152 at 224 in tens of seconds; a batch of 128 of ResNet-50 takes ~50 ms per framework,
# RMNeXt-101's ~2.7x that): step 1 ~10 s per network (compile, a cuDNN-autotuned twin, 2 x 25
# batches) for 22 networks plus ~30 s building them: ~4 min, cut at 220 s (the deepest groups
# come last); 2 ~80 s (the training steps compile for ~30 s each); 3 ~60 s; 4 ~50 s; 5 up to 40
# s an inductor compilation (ResNet-50, then RMNeXt-41x4_8 plain); 6 ~25 s. Each limit can be
# changed by T_<step> (seconds; T_imagenet=300), the protocol by PROTOCOL. Limits as set: 8 min
# 50 s for the steps, plus ~15 s of versions and the summary.
#
# Lessons of the last session (2026-11-29) kept here: no preallocation (several processes
# share the card, and torch's allocator beside jax's); PYTHONPATH=. (rmjax is not installed
# there); each call of a sub-millisecond layer timed singly measures dispatch, so the layer
# timings dispatch batches back to back; max-autotune took over 5 minutes for one ResNet-50.
#
#   usage (on the device): OUT=/some/dir bash scripts/gpu_checks.sh
#   dry run on a CPU (tiny networks, same steps and files): GPU_CHECKS_DRY=1 OUT=/tmp/o bash ...
# At most 8 files come back from $OUT: gpu_checks.log, summary.md, benchmarks.md (docs with
# the new sections; the integrator copies them into docs/benchmarks.md) and results.tgz (each
# step's bench.json, bench.md and log), re-packed after every step.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gpu_out}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_checks.log") 2>&1
cp docs/benchmarks.md "$WORK/benchmarks.md"

if [ "${GPU_CHECKS_DRY:-0}" = 1 ]; then
  # Tiny networks at 32x32 on the CPU: every code path, no speed. torch.compile's inductor
  # needs a C++ toolchain and minutes on a CPU; dynamo alone ("eager") exercises the flag.
  SIZE="--tiny_models --image_size=32 --batch_sizes=4 --warmup=1 --batches=2 --repeats=1"
  PRECISION_BATCH=2 COMPILE="--torch_compile_backend=eager" SCALE=${DRY_SCALE:-4}
else
  SIZE="--image_size=224 --batch_sizes=128 ${PROTOCOL:---warmup=5 --batches=10 --repeats=2}"
  PRECISION_BATCH=16 COMPILE="--torch_compile_timeout=40" SCALE=1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
$PY - <<'EOF'
import flax, jax, jaxlib
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, jax.devices())
try:
  import torch
  cuda = torch.cuda.is_available()
  print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
        torch.backends.cudnn.version(), torch.cuda.get_device_name() if cuda else "(no CUDA)")
except ImportError:
  print("no torch")
EOF

start_all=$(date +%s)
# step NAME SECONDS ARGS...: one bench.py run under `timeout`, its docs section named gpu-NAME
# (gpu-imagenet for "imagenet"), everything it writes in $WORK/NAME, then re-packed into $OUT.
step() {
  local name=$1 limit="T_${1//-/_}" start
  local seconds=$((${!limit:-$2} * SCALE))
  shift 2
  start=$(date +%s)
  mkdir -p "$WORK/$name"
  echo "== $name (at most $seconds s): bench.py $*"
  timeout -k 10 "$seconds" $PY bench.py $SIZE --convert= --write_docs --docs="$WORK/benchmarks.md" \
    --docs_section="gpu-$name" --out_dir="$WORK/$name" "$@" >"$WORK/$name/log" 2>&1
  local rc=$? note=""
  [ $rc = 124 ] || [ $rc = 137 ] && note=" (cut at its time limit: the rows done are kept)"
  echo "$name rc=$rc in $(($(date +%s) - start)) s$note" | tee -a "$WORK/steps"
  grep -E "^\[|error|Error|warning" "$WORK/$name/log" | tail -n 6
  tar -czf "$OUT/results.tgz" -C "$WORK" . && cp "$WORK/benchmarks.md" "$OUT/benchmarks.md"
}

step imagenet 220 --suites=imagenet --modes=dense,structured,auto
step train 85 --suites=resnet50,rmnext50x6_32 --modes= --noinference --train_steps \
  --train_dtype=bfloat16
step precision 60 --suites=resnet50,rmnext41x4_8,rmnext50x6_32 --modes=dense,auto --noinference \
  --precision_check --precision_batch=$PRECISION_BATCH
step imagenet-bf16 50 --suites=resnet50,rmnext50x6_32 --modes=dense --dtype=bfloat16
step compile 90 --suites=resnet50,rmnext41x4_8 --modes=dense $COMPILE \
  "--networks=ResNet-50,RMNeXt-41x4_8 plain (dense)" --torch_compile=all
step layers 25 --suites=resnet50,rmnext50x6_32 --modes=dense --noinference --layer_timings \
  --warmup=3 --batches=10

# The summary: each step's time, then Table 3's ratios and the training step (from the JSON).
$PY - "$WORK" <<'EOF' | tee "$OUT/summary.md"
import json, os, sys
from rmjax.bench import report
work = sys.argv[1]
print("## Steps\n\n" + open(os.path.join(work, "steps")).read())
def load(name):
  path = os.path.join(work, name, "bench.json")
  return json.load(open(path)) if os.path.exists(path) else None
r = load("imagenet")
if r and r["results"]:
  print("## Table 3 (float32)\n\n" + report.header(r["meta"]) + "\n")
  print("\n".join(report.table3_table(r["results"], r["results"][0]["batch_size"])) + "\n")
  print(report.default_line(r["results"]) + "\n")
for name, key, table in (("train", "train", report.train_table), ("precision", "precision",
                         report.precision_table), ("compile", "results", None)):
  r = load(name)
  if r and r[key]:
    lines = table(r[key]) if table else report.speed_table(r[key], r[key][0]["batch_size"], True)
    print(f"## {name}\n\n" + "\n".join(lines) + "\n")
EOF
tar -czf "$OUT/results.tgz" -C "$WORK" . && cp "$WORK/benchmarks.md" "$OUT/benchmarks.md"
echo "all steps in $(($(date +%s) - start_all)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
