"""Inference speed, params, FLOPs and memory of residual networks beside their plain forms.

  python bench.py                                  # the default networks, batch 128
  python bench.py --batch_sizes=1,8,32,128         # Appendix A.3's sweep (Fig. 11)
  python bench.py --suites=resnet18 --modes=dense,structured --dtype=bfloat16
  python bench.py --quick                          # a tiny ResNet in seconds (CI)
  python bench.py --engines=xla,torch,onnxruntime  # + each plain network's ONNX in ORT
  python bench.py --write_docs                     # also rewrites this device's docs section
  python bench.py --suites=resnet18 --train_steps  # + a training step, rmjax beside PyTorch
  python bench.py --suites=imagenet --image_size=224 --torch_compile=ResNet-50  # Table 3, GPU
  python bench.py --suites=resnet50 --image_size=224 --noinference --train_steps \
    --train_dtype=bfloat16                         # bf16 training step beside PyTorch AMP

Prints a Markdown table and writes bench.json, bench.md and bench.png to --out_dir; progress
goes to stderr, one line per measurement, and bench.json, bench.md (and with --write_docs the
docs section) are rewritten after each row, so a run stopped midway keeps what it measured. The
paper's protocol (Sec. 5: 50 warm-up + 50 timed batches of 128) is the default on
accelerators; on CPU the default is 2 + 3 x 4 batches (--warmup, --batches, --repeats override
both). Where torch is installed, each network's PyTorch twin (same weights, eval mode) is timed
beside it on the same device (--notorch: not): on the CPU with as many threads, on a GPU with
CUDA, channels-last and cuDNN autotuning. Where onnxruntime is installed, each plain network's
ONNX export (`rmjax.deploy.onnx.to_onnx`), checked against the JAX network on the bench batch, is
timed beside it in ONNX Runtime (`--engines`; table "Serving engines").
"""

import dataclasses
import os
import sys

from absl import app, flags

from rmjax import cli
from rmjax.bench import layers, measure, onnx_timing, precision, suites, torch_timing, training
from rmjax.bench import report as bench_report

_SUITES = flags.DEFINE_list(
  "suites",
  None,
  f"Networks to measure, by suite: {', '.join(suites.SUITES)}. "
  f"Default: {','.join(suites.DEFAULT_SUITES)} (tiny with --quick).",
)
_NETWORKS = flags.DEFINE_list(
  "networks",
  None,
  "Only these networks of the suites (names as in the tables, e.g. 'ResNet-50,RMNeXt-50x6_32 "
  "plain (dense)'); the networks they were converted from are built regardless.",
)
_MODES = flags.DEFINE_list(
  "modes",
  ["dense", "structured"],
  f"How the plain networks run: {', '.join(suites.PLAIN_MODES)} (structured skips the Dirac "
  "zeros RM adds; only for networks that have them).",
)
_BATCH_SIZES = flags.DEFINE_list(
  "batch_sizes", None, "Batch sizes to time, e.g. 1,8,32,128. Default: 128 (8 with --quick)."
)
_DTYPE = flags.DEFINE_enum(
  "dtype", "float32", ["float32", "bfloat16"], "Dtype of variables and inputs."
)
_IMAGE_SIZE = flags.DEFINE_integer(
  "image_size", 32, "Input size: <= 64 builds CIFAR stems and 10 classes, else ImageNet's."
)
_WARMUP = flags.DEFINE_integer("warmup", None, "Warm-up batches (default: see above).")
_BATCHES = flags.DEFINE_integer("batches", None, "Timed batches per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed repeats (median and spread over them).")
_QUICK = flags.DEFINE_bool(
  "quick", False, "A smoke run: the tiny suite, batch 8, 1 + 1 x 2 batches, tiny conversion."
)
_CONVERT = flags.DEFINE_list(
  "convert",
  None,
  "Models whose jitted rm_convert to time at 224x224 (model names, or tiny). "
  "Default: resnet50,rmnext50x6_32 (tiny with --quick); pass --convert= for none.",
)
_TORCH = flags.DEFINE_bool(
  "torch",
  None,
  "Also time each network's PyTorch twin (same weights, eval mode, same threads, same batch): "
  "columns PyTorch imgs/s and rmjax / PyTorch. Default: on where torch is installed.",
)
ENGINES = ("xla", "torch", onnx_timing.ENGINE, onnx_timing.INT8)
_ENGINES = flags.DEFINE_list(
  "engines",
  None,
  f"Engines timed in turn on each network: {', '.join(ENGINES)}. xla (rmjax's own execution) is "
  "always timed; torch is the PyTorch twin (as --torch); onnxruntime times each plain network's "
  "ONNX export in ONNX Runtime (CPU, float32), onnxruntime_int8 its int8 form "
  "(rmjax.deploy.quantize.quantize_model). Default: xla, and each other one that can run here "
  "(those that cannot are named, with why, on stderr and in the report).",
)
_ORT_LAYOUT = flags.DEFINE_enum(
  "onnxruntime_layout", "nhwc", ["nhwc", "nchw"], "Input layout of the ONNX artefacts timed."
)
_TORCH_CHANNELS_LAST = flags.DEFINE_bool(
  "torch_channels_last",
  None,
  "Run the PyTorch twins in torch's channels-last memory format (NHWC in memory). Default: "
  "on a GPU, not on the CPU.",
)
_TORCH_COMPILE = flags.DEFINE_list(
  "torch_compile",
  [],
  "Networks (names as in the tables, or all) whose PyTorch twin is also timed torch.compile'd: "
  "columns torch.compile imgs/s and rmjax / compiled. Compiling takes minutes on a GPU.",
)
_TORCH_COMPILE_MODE = flags.DEFINE_string(
  "torch_compile_mode", "default", "torch.compile's mode (max-autotune: far longer compiles)."
)
_TORCH_COMPILE_BACKEND = flags.DEFINE_string(
  "torch_compile_backend", "inductor", "torch.compile's backend (eager: dynamo alone, quick)."
)
_TORCH_COMPILE_TIMEOUT = flags.DEFINE_float(
  "torch_compile_timeout",
  300.0,
  "Seconds a twin's compilation (its first call) may take; then it is abandoned and the "
  "table says 'timed out'.",
)
_TINY_MODELS = flags.DEFINE_bool(
  "tiny_models",
  False,
  "Build each suite's architectures tiny (two stages of 1-2 blocks, 4-16 channels): the same "
  "code paths in seconds (tests, dry runs of scripts/gpu_checks.sh).",
)
_INFERENCE = flags.DEFINE_bool(
  "inference", True, "Time inference (--noinference: only what the other flags ask for)."
)
_PRECISION_CHECK = flags.DEFINE_bool(
  "precision_check",
  False,
  "Also report each plain network's max |logit difference| from its source at jax's default "
  "matmul precision (TF32 convolutions on GPUs) and at 'highest' (full float32).",
)
_PRECISION_BATCH = flags.DEFINE_integer("precision_batch", 16, "Batch size of --precision_check.")
_LAYER_TIMINGS = flags.DEFINE_bool(
  "layer_timings",
  False,
  "Also time each plain network's structured convs alone, dense vs structured (at the first "
  "batch size): what the default execution's thresholds are set from.",
)
_TRAIN_STEPS = flags.DEFINE_bool(
  "train_steps",
  False,
  "Also time a training step (SGD with momentum) of each trainable (residual) network, in rmjax "
  "and, with --torch, in PyTorch: the table 'Training step'.",
)
_TRAIN_BATCH_SIZES = flags.DEFINE_list(
  "train_batch_sizes", None, "Batch sizes of the training steps. Default: --batch_sizes."
)
_TRAIN_DTYPE = flags.DEFINE_enum(
  "train_dtype",
  "float32",
  ["float32", "bfloat16"],
  "Compute dtype of the training steps: bfloat16 is mixed precision (float32 master weights, "
  "bfloat16 forward and backward), beside PyTorch's AMP (torch.autocast).",
)
_OUT_DIR = flags.DEFINE_string("out_dir", "bench_results", "Where bench.json/.md/.png go.")
_WRITE_DOCS = flags.DEFINE_bool(
  "write_docs",
  False,
  "Also put the tables into docs/benchmarks.md, in the section of this platform (cpu, gpu).",
)
_DOCS_SECTION = flags.DEFINE_string(
  "docs_section",
  None,
  "The marked section of --docs that --write_docs replaces (and the plot's name). Default: the "
  "platform (cpu, gpu); another name keeps a second table, e.g. cpu-torch.",
)
_DOCS = flags.DEFINE_string(
  "docs",
  # The repository's docs/ (this file is rmjax/commands/bench.py).
  os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "benchmarks.md")
  ),
  "The file --write_docs updates; the plot goes beside it as benchmarks_<platform>.png.",
)


def _protocol(platform_name: str) -> measure.Protocol:
  base = measure.QUICK if _QUICK.value else measure.default_protocol(platform_name)
  return measure.Protocol(
    warmup=base.warmup if _WARMUP.value is None else _WARMUP.value,
    batches=base.batches if _BATCHES.value is None else _BATCHES.value,
    repeats=base.repeats if _REPEATS.value is None else _REPEATS.value,
  )


def _ints(flag) -> list[int]:
  try:
    return [int(b) for b in flag.value]
  except ValueError:
    raise app.UsageError(f"--{flag.name} must be integers, got {flag.value}") from None


def _wanted(engine: str) -> bool | None:
  """Whether --engines names `engine` (None: --engines not given, each engine's default)."""
  if _ENGINES.value is None:
    return None
  unknown = sorted(set(_ENGINES.value) - set(ENGINES))
  if unknown:
    raise app.UsageError(f"--engines: unknown {unknown}; known: {', '.join(ENGINES)}")
  return engine in _ENGINES.value or (
    engine == onnx_timing.ENGINE and onnx_timing.INT8 in _ENGINES.value
  )


def _onnx_options(dtype: str, skipped: dict[str, str]) -> onnx_timing.Options | None:
  """The ORT artefacts' options, or None; an engine that cannot run is an error where --engines
  asks for it, else it goes into `skipped` (engine -> why) and the run goes on without it."""
  reasons = {
    onnx_timing.ENGINE: onnx_timing.unavailable(),
    onnx_timing.INT8: onnx_timing.int8_unavailable(),
  }
  if dtype != "float32":
    reasons[onnx_timing.ENGINE] = reasons[onnx_timing.INT8] = (
      f"the ONNX artefacts are float32; this run is --dtype={dtype}"
    )
  timed = {}
  for engine, why in reasons.items():
    wanted = _wanted(engine)
    if why is not None and wanted:
      raise ValueError(f"--engines={engine} cannot run: {why}")
    timed[engine] = why is None and wanted is not False
    if why is not None or wanted is False:
      skipped[engine] = why or "not in --engines"
  if not timed[onnx_timing.ENGINE]:
    return None
  threads = torch_timing.cpu_count()
  return onnx_timing.Options(threads, _ORT_LAYOUT.value, int8=timed[onnx_timing.INT8])


def _torch_options(platform_name: str) -> torch_timing.Options | None:
  """The twins' options, or None without torch; ValueError where torch cannot run beside jax."""
  if _ENGINES.value is not None and _TORCH.value is not None and _TORCH.value != _wanted("torch"):
    raise ValueError("--torch and --engines disagree on torch: pass one of them")
  torch = _wanted("torch") if _TORCH.value is None else _TORCH.value
  torch = torch_timing.available() if torch is None else torch
  if not torch:
    return None
  if not torch_timing.available():
    raise ValueError(
      "--torch needs PyTorch, which is not installed: pip install 'rmjax[interop]' "
      "(or pass --notorch)"
    )
  device = torch_timing.device(platform_name)
  channels_last = _TORCH_CHANNELS_LAST.value
  return torch_timing.Options(
    device=device,
    channels_last=device == "cuda" if channels_last is None else channels_last,
    compile=tuple(_TORCH_COMPILE.value),
    compile_mode=_TORCH_COMPILE_MODE.value,
    compile_backend=_TORCH_COMPILE_BACKEND.value,
    compile_timeout=_TORCH_COMPILE_TIMEOUT.value,
  )


class Results:
  """The report, saved after every row (bench.json, bench.md, the docs section) so that a run
  stopped midway keeps what it measured; the plot at the end."""

  def __init__(self, meta: dict):
    self.report = {"meta": {**meta, "stopped": "cut short by a time limit or an error"}}
    for key in ("results", "train", "precision", "layers", "convert"):
      self.report[key] = []

  def setter(self, key: str):
    def on_row(rows):
      self.report[key] = list(rows)
      self.save()

    return on_row

  def save(self, final: bool = False) -> str:
    if final:
      self.report["meta"].pop("stopped")
    text = bench_report.markdown(self.report)
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    bench_report.write_json(os.path.join(_OUT_DIR.value, "bench.json"), self.report)
    with open(os.path.join(_OUT_DIR.value, "bench.md"), "w") as f:
      f.write(text)
    plot = ""
    if final and self.report["results"]:
      bench_report.plot(self.report, os.path.join(_OUT_DIR.value, "bench.png"))
    if _WRITE_DOCS.value:
      meta = self.report["meta"]
      section = _DOCS_SECTION.value or meta["platform"]
      # The plot is against batch size: a sweep's (Fig. 11), not one batch size's.
      if final and len({r["batch_size"] for r in self.report["results"]}) > 1:
        figure = f"benchmarks_{section}.png"
        bench_report.plot(self.report, os.path.join(os.path.dirname(_DOCS.value), figure))
        plot = f"\n![speed-up and imgs/s against batch size]({figure})\n"
      title = f"## {section.upper()}: {meta['device']}\n\n`{meta['command']}`\n\n"
      bench_report.update_docs(_DOCS.value, section, title + text + plot)
    return text


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quick = _QUICK.value
  names = _SUITES.value or (["tiny"] if quick else list(suites.DEFAULT_SUITES))
  batch_sizes = _ints(_BATCH_SIZES) if _BATCH_SIZES.value else ([8] if quick else [128])
  train_batch_sizes = _ints(_TRAIN_BATCH_SIZES) if _TRAIN_BATCH_SIZES.value else batch_sizes
  convert = (
    _CONVERT.value
    if _CONVERT.value is not None
    else (["tiny"] if quick else ["resnet50", "rmnext50x6_32"])
  )
  meta = measure.device_info()
  protocol = _protocol(meta["platform"])
  settings = suites.Settings(
    image_size=_IMAGE_SIZE.value,
    modes=tuple(_MODES.value),
    dtype=_DTYPE.value,
    tiny=_TINY_MODELS.value,
  )
  skipped: dict[str, str] = {}
  try:
    torch = _torch_options(meta["platform"])
    onnxruntime = _onnx_options(_DTYPE.value, skipped)
    networks = suites.build(names, settings, progress=measure.log)
    networks = suites.select(networks, _NETWORKS.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  meta.update(
    dtype=_DTYPE.value,
    image_size=_IMAGE_SIZE.value,
    protocol=dataclasses.asdict(protocol),
    suites=names,
    modes=list(_MODES.value),
    tiny_models=_TINY_MODELS.value,
    command=" ".join(["python bench.py", *sys.argv[1:]]),
  )
  if torch is not None:
    meta.update(torch_timing.configure(torch, meta["cpu_count"]))
  meta.update(onnx_timing.describe(onnxruntime, skipped))
  for engine, why in skipped.items():
    measure.log(f"{engine}: skipped, {why}")
  results = Results(meta)
  report = results.report
  if _INFERENCE.value:
    on_row = results.setter("results")
    measure.run(
      networks,
      batch_sizes=batch_sizes,
      protocol=protocol,
      torch=torch,
      onnxruntime=onnxruntime,
      on_row=on_row,
    )
  if _TRAIN_STEPS.value:
    training.run(
      networks,
      batch_sizes=train_batch_sizes,
      protocol=protocol,
      torch=torch,
      compute_dtype=_TRAIN_DTYPE.value,
      on_row=results.setter("train"),
    )
  if _PRECISION_CHECK.value:
    on_row = results.setter("precision")
    precision.logit_differences(networks, batch=_PRECISION_BATCH.value, on_row=on_row)
  if _LAYER_TIMINGS.value:
    on_row = results.setter("layers")
    layers.conv_timings(networks, batch=batch_sizes[0], protocol=protocol, on_row=on_row)
  for name in convert:
    for keep_bn in (False, True):
      r = measure.time_convert(name, keep_bn=keep_bn)
      report["convert"].append(r)
      measure.log(
        f"rm_convert {name} {'keep_bn' if keep_bn else 'deploy'}: lowered in "
        f"{r['lower_seconds']:.2f}s, compiled in {r['compile_seconds']:.2f}s, "
        f"{r['call_ms']:.0f} ms a call"
      )
  print(results.save(final=True))
  _warn(report)
  return 0


def _warn(report) -> None:
  rows = report["results"]
  disagree = [r["network"] for r in rows if r["flops_agree"] is False]
  if disagree:
    print(f"warning: XLA and analytical FLOPs disagree for {disagree}", file=sys.stderr)
  tolerance = measure.twin_tolerance(report["meta"])
  twins = [
    f"{r['network']} (batch {r['batch_size']})"
    for r in rows
    if measure.twin_disagrees(r, tolerance)
  ]
  if twins:
    print(
      f"warning: the PyTorch twin's logits differ from rmjax's by more than "
      f"{tolerance:g} x max(1, max |logit|) for {twins}",
      file=sys.stderr,
    )


def main() -> None:
  """The `rmjax-bench` console script and `python bench.py`."""
  cli.run(_main, __doc__)
