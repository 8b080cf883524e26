"""Inference speed, params, FLOPs and memory of residual networks beside their plain forms.

  python bench.py                                  # the default networks, batch 128
  python bench.py --batch_sizes=1,8,32,128         # Appendix A.3's sweep (Fig. 11)
  python bench.py --suites=resnet18 --modes=dense,structured --dtype=bfloat16
  python bench.py --quick                          # a tiny ResNet in seconds (CI)
  python bench.py --write_docs                     # also rewrites this device's docs section
  python bench.py --suites=resnet18 --train_steps  # + a training step, rmjax beside PyTorch

Prints a Markdown table and writes bench.json, bench.md and bench.png to --out_dir; progress
goes to stderr, one line per measurement. The paper's protocol (Sec. 5: 50 warm-up + 50 timed
batches of 128) is the default on accelerators; on CPU the default is 2 + 3 x 4 batches
(--warmup, --batches, --repeats override both). Where torch is installed, each network's
PyTorch twin (same weights, eval mode, same threads) is timed beside it (--notorch: not).
"""

import dataclasses
import os
import sys

from absl import app, flags

from rmjax.bench import measure, suites, torch_timing, training
from rmjax.bench import report as bench_report

_SUITES = flags.DEFINE_list(
  "suites",
  None,
  f"Networks to measure, by suite: {', '.join(suites.SUITES)}. "
  f"Default: {','.join(suites.DEFAULT_SUITES)} (tiny with --quick).",
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
_TORCH_CHANNELS_LAST = flags.DEFINE_bool(
  "torch_channels_last",
  False,
  "Run the PyTorch twins in torch's channels-last memory format (NHWC in memory).",
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
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "docs", "benchmarks.md"),
  "The file --write_docs updates; the plot goes beside it as benchmarks_<platform>.png.",
)


def _protocol(platform_name: str) -> measure.Protocol:
  base = measure.QUICK if _QUICK.value else measure.default_protocol(platform_name)
  return measure.Protocol(
    warmup=base.warmup if _WARMUP.value is None else _WARMUP.value,
    batches=base.batches if _BATCHES.value is None else _BATCHES.value,
    repeats=base.repeats if _REPEATS.value is None else _REPEATS.value,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quick = _QUICK.value
  names = _SUITES.value or (["tiny"] if quick else list(suites.DEFAULT_SUITES))
  try:
    batch_sizes = [int(b) for b in (_BATCH_SIZES.value or (["8"] if quick else ["128"]))]
  except ValueError:
    raise app.UsageError(f"--batch_sizes must be integers, got {_BATCH_SIZES.value}") from None
  try:
    train_batch_sizes = [int(b) for b in _TRAIN_BATCH_SIZES.value or batch_sizes]
  except ValueError:
    raise app.UsageError(
      f"--train_batch_sizes must be integers, got {_TRAIN_BATCH_SIZES.value}"
    ) from None
  torch = torch_timing.available() if _TORCH.value is None else _TORCH.value
  if torch and not torch_timing.available():
    print(
      "error: --torch needs PyTorch, which is not installed: pip install 'rmjax[interop]' "
      "(or pass --notorch)",
      file=sys.stderr,
    )
    return 2
  convert = (
    _CONVERT.value
    if _CONVERT.value is not None
    else (["tiny"] if quick else ["resnet50", "rmnext50x6_32"])
  )
  meta = measure.device_info()
  protocol = _protocol(meta["platform"])
  settings = suites.Settings(
    image_size=_IMAGE_SIZE.value, modes=tuple(_MODES.value), dtype=_DTYPE.value
  )
  try:
    networks = suites.build(names, settings, progress=measure.log)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  meta.update(
    dtype=_DTYPE.value,
    image_size=_IMAGE_SIZE.value,
    protocol=dataclasses.asdict(protocol),
    suites=names,
    modes=list(_MODES.value),
    command=" ".join(["python bench.py", *sys.argv[1:]]),
  )
  channels_last = _TORCH_CHANNELS_LAST.value
  if torch:
    meta.update(torch_timing.configure(meta["cpu_count"]), torch_channels_last=channels_last)
  rows = measure.run(
    networks, batch_sizes=batch_sizes, protocol=protocol, torch=torch, channels_last=channels_last
  )
  train = []
  if _TRAIN_STEPS.value:
    train = training.run(
      networks,
      batch_sizes=train_batch_sizes,
      protocol=protocol,
      torch=torch,
      channels_last=channels_last,
    )
  converted = []
  for name in convert:
    for keep_bn in (False, True):
      r = measure.time_convert(name, keep_bn=keep_bn)
      converted.append(r)
      measure.log(
        f"rm_convert {name} {'keep_bn' if keep_bn else 'deploy'}: lowered in "
        f"{r['lower_seconds']:.2f}s, compiled in {r['compile_seconds']:.2f}s, "
        f"{r['call_ms']:.0f} ms a call"
      )
  report = {"meta": meta, "results": rows, "train": train, "convert": converted}
  text = bench_report.markdown(report)
  print(text)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  bench_report.write_json(os.path.join(_OUT_DIR.value, "bench.json"), report)
  with open(os.path.join(_OUT_DIR.value, "bench.md"), "w") as f:
    f.write(text)
  bench_report.plot(report, os.path.join(_OUT_DIR.value, "bench.png"))
  if _WRITE_DOCS.value:
    section = _DOCS_SECTION.value or meta["platform"]
    figure = f"benchmarks_{section}.png"
    bench_report.plot(report, os.path.join(os.path.dirname(_DOCS.value), figure))
    title = f"## {section.upper()}: {meta['device']}\n\n`{meta['command']}`\n\n"
    plot = f"\n![speed-up and imgs/s against batch size]({figure})\n"
    bench_report.update_docs(_DOCS.value, section, title + text + plot)
  disagree = [r["network"] for r in rows if r["flops_agree"] is False]
  if disagree:
    print(f"warning: XLA and analytical FLOPs disagree for {disagree}", file=sys.stderr)
  twins = [f"{r['network']} (batch {r['batch_size']})" for r in rows if measure.twin_disagrees(r)]
  if twins:
    print(
      f"warning: the PyTorch twin's logits differ from rmjax's by more than "
      f"{measure.TWIN_TOLERANCE:g} x max(1, max |logit|) for {twins}",
      file=sys.stderr,
    )
  return 0


if __name__ == "__main__":
  app.run(main)
