"""Writes docs/quantization.md and docs/quantization.png: float32 vs int8 top-1 of trained
networks on the embedded Fashion-MNIST subset, residual and RM-plain, with and without the
reserved-channel equalisation (rmjax.deploy.quantize, rmjax.transforms.equalize).

  python scripts/quantization_table.py                      # ~20 minutes on 2 CPU cores
  python scripts/quantization_table.py --workdir /tmp/q     # reuses the runs trained there

Networks (short runs of configs/demo.py's recipe, 3 epochs each): the demo's ResNet-20, residual
(exported by `residual_onnx` below: the plain exporter takes only chains) and RM plain; a
RepVGG-A0-style network (A0's depths, CIFAR widths), deployed by re-parameterisation; the
paper's MobileNetV2 converted to MobileNetV1 (RM + fusion, PReLU on reserved channels).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from configs import demo  # noqa: E402
from rmjax import atomic, run, train, transforms, verify  # noqa: E402
from rmjax.deploy import onnx as onnx_export  # noqa: E402
from rmjax.deploy import quantize  # noqa: E402
from rmjax.models.layers import BN_EPSILON, Head, Stem  # noqa: E402
from rmjax.models.plain import Conv  # noqa: E402
from rmjax.models.resnet import BasicBlock  # noqa: E402
from rmjax.transforms.convert import folded_conv  # noqa: E402

DATASET = "fashion_mnist_small"
# docs/quantization.md: the text between these lines is this script's; the rest is written by hand.
BEGIN, END = "<!-- quantization_table.py: begin -->", "<!-- quantization_table.py: end -->"
DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")
NETWORKS = {
  "ResNet-20": ("resnet20", {}),
  "RepVGG-A0-style": (
    "repvgg_a0",
    {"stem": "cifar", "widths": (16, 32, 64, 128), "stem_width": 16},
  ),
  "MobileNetV2 -> V1": ("mobilenetv2_to_v1", {"stem": "cifar", "width": 0.5}),
}


def trained(name: str, workdir: str, epochs: float) -> run.Run:
  """The run of `NETWORKS[name]` in `workdir` (trained there first unless it is done)."""
  model, kwargs = NETWORKS[name]
  config = demo.get_config()
  config.model = model
  config.model_kwargs.update(kwargs)
  config.num_epochs = epochs
  config.eval_every_epochs = epochs
  config.compare_plain = False
  train.train_and_evaluate(config, workdir)  # a finished run resumes at its end: no steps
  return run.load_run(workdir)


def residual_onnx(model, variables, input_shape) -> bytes:
  """The residual CIFAR ResNet (stem, BasicBlocks, head) as an NHWC ONNX model, BN folded into
  the convs, the sums as Add nodes; checked against the model (the rule of `rmjax.verify`)."""
  onnx, _ = onnx_export._require()
  g = onnx_export._Graph(onnx)
  x = g.node("Transpose", [onnx_export.INPUT], "images/nchw", perm=[0, 3, 1, 2])
  for part in model.layout():
    v = {col: tree[part.name] for col, tree in variables.items() if part.name in tree}

    def conv(x, conv_name, bn_name, k, stride, name, part=part, v=v):
      kernel, bias = folded_conv(v, conv_name, bn_name, epsilon=BN_EPSILON)
      layer = Conv(kernel.shape[2], kernel.shape[3], k, stride, k // 2)
      return onnx_export._conv(g, layer, {"params": {"kernel": kernel, "bias": bias}}, x, name)

    if isinstance(part, Stem):
      x = g.node("Relu", [conv(x, "conv", "bn", 3, 1, "stem")], "stem/relu")
    elif isinstance(part, BasicBlock):
      y = conv(x, "conv1", "bn1", 3, part.strides, f"{part.name}/conv1")
      y = conv(g.node("Relu", [y], f"{part.name}/relu1"), "conv2", "bn2", 3, 1, f"{part.name}/c2")
      if part.has_projection:
        x = conv(x, "proj_conv", "proj_bn", 1, part.strides, f"{part.name}/proj")
      x = g.node("Relu", [g.node("Add", [y, x], f"{part.name}/add")], f"{part.name}/out")
    elif isinstance(part, Head):
      x = onnx_export._global_avg_pool(g, None, None, x, "pool")
      x = onnx_export._dense(g, None, {"params": v["params"]["fc"]}, x, onnx_export.OUTPUT)
    else:
      raise TypeError(f"residual_onnx: no mapping for {type(part).__name__}")
  graph = onnx.helper.make_graph(
    g.nodes,
    "residual",
    [onnx.helper.make_tensor_value_info(onnx_export.INPUT, 1, [None, *input_shape])],
    [onnx.helper.make_tensor_value_info(onnx_export.OUTPUT, 1, [None, None])],
    initializer=g.initializers,
  )
  opset = [onnx.helper.make_opsetid("", onnx_export.OPSET)]
  data = onnx.helper.make_model(
    graph, opset_imports=opset, ir_version=onnx_export.IR_VERSION
  ).SerializeToString()
  images = np.random.default_rng(0).standard_normal((4, *input_shape)).astype(np.float32)
  want = verify.eval_logits(model, variables, images)
  check = verify.difference(want, onnx_export._run(onnx_export._session(data, 2), images))
  assert verify.within(check, verify.TOLERANCE), check
  return data


def residual_row(source: run.Run, batches) -> dict:
  data = residual_onnx(source.model, jax.device_get(source.variables), source.input_shape)
  int8 = quantize.quantize_model(data, batches)
  return {
    "float32": quantize.top1(data, DATASET),
    "int8": quantize.top1(int8, DATASET),
    "int8_eq": None,
    "ratios": [],
  }


def plain_row(source: run.Run, batches_count: int) -> dict:
  plain, variables = transforms.rm_convert(source.model, source.variables)
  runs = {}
  for equalize in (False, True):
    _, runs[equalize] = quantize.quantize_int8(
      plain,
      variables,
      source.input_shape,
      dataset=DATASET,
      num_batches=batches_count,
      equalize=equalize,
      max_drop=100.0,  # the table records every result; convert.py refuses at 1.0
    )
  return {
    "float32": runs[False]["float32_top1"],
    "int8": runs[False]["int8_top1"],
    "int8_eq": runs[True]["int8_top1"] if runs[True]["equalized"] else None,
    "ratios": [r["ratio"] for r in runs[False]["reserved_ratios"]],
    "layers": len(plain.layers),
  }


def recipe_rows(source: run.Run, batches_count: int) -> list[tuple[str, str, float, float]]:
  """The recipe choice: `(activations, calibration, float32 top-1, int8 top-1)` of the RM plain
  network for each activation type and calibration method of `rmjax.deploy.quantize`."""
  plain, variables = transforms.rm_convert(source.model, source.variables)
  rows = []
  for activations in quantize.ACTIVATION_TYPES:
    for method in quantize.CALIBRATION_METHODS:
      _, r = quantize.quantize_int8(
        plain,
        variables,
        source.input_shape,
        dataset=DATASET,
        num_batches=batches_count,
        activations=activations,
        method=method,
        max_drop=100.0,
      )
      rows.append((activations, method, r["float32_top1"], r["int8_top1"]))
  return rows


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    model = platform.processor() or platform.machine()
  return f"{model}, {os.cpu_count()} cores visible"


def _fmt(v) -> str:
  return "—" if v is None else f"{v:.2f}%"


def _ratios(r: list[float]) -> str:
  if not r:
    return "— (no reserved channels)"
  return f"{min(r):.2f} / {np.median(r):.2f} / {max(r):.2f} ({len(r)} layers)"


def markdown(rows, meta) -> str:
  lines = [
    f"Generated by `{meta['command']}` on {meta['machine']}, {meta['date']}",
    f"(onnxruntime {meta['ort']}, {meta['epochs']:g} training epochs per network, "
    f"calibration: {meta['batches']} x 64 unaugmented {DATASET} train images, MinMax, "
    f"uint8 activations, per-channel int8 weights; top-1 on the 2,000-image test split, where "
    "one image is 0.05 points).",
    "",
    "| network | float32 top-1 | int8 top-1 (per-tensor) | int8, reserved equalised | delta "
    "(int8 - float32) | reserved/own max \\|activation\\| (min / median / max) |",
    "|---|---|---|---|---|---|",
  ]
  for name, r in rows.items():
    lines.append(
      f"| {name} | {_fmt(r['float32'])} | {_fmt(r['int8'])} | {_fmt(r['int8_eq'])} | "
      f"{r['int8'] - r['float32']:+.2f} | {_ratios(r['ratios'])} |"
    )
  lines += [
    "",
    "![float32 vs int8 top-1](quantization.png)",
    "",
    "The recipe, measured on the RM plain ResNet-20 (no equalisation):",
    "",
    "| activations | calibration | float32 top-1 | int8 top-1 |",
    "|---|---|---|---|",
  ]
  for activations, method, f32, int8 in meta["recipes"]:
    lines.append(f"| {activations} | {method} | {f32:.2f}% | {int8:.2f}% |")
  lines.append("")
  return "\n".join(lines)


def plot(rows, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(rows)
  series = [("float32", "float32"), ("int8", "int8 per-tensor"), ("int8_eq", "int8 equalised")]
  fig, ax = plt.subplots(figsize=(9, 4))
  width = 0.27
  for k, (key, label) in enumerate(series):
    values = [rows[n][key] if rows[n][key] is not None else 0.0 for n in names]
    bars = ax.bar(np.arange(len(names)) + (k - 1) * width, values, width, label=label)
    ax.bar_label(bars, labels=[f"{v:.2f}" if v else "" for v in values], fontsize=7)
  known = [rows[n][k] for n in names for k, _ in series if rows[n][k] is not None]
  ax.set_ylim(min(known) - 3, max(known) + 1.5)
  ax.set_xticks(np.arange(len(names)), names, fontsize=8)
  ax.set_ylabel(f"top-1 (%) on {DATASET} test")
  ax.legend(fontsize=8, loc="upper left", ncols=3)
  ax.set_title("Post-training int8 (ONNX Runtime QDQ) vs float32")
  fig.tight_layout()
  with atomic.staged_file(path) as tmp:
    fig.savefig(tmp, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/rmjax_quantization")
  parser.add_argument("--epochs", type=float, default=3.0)
  parser.add_argument("--calibration_batches", type=int, default=8)
  args = parser.parse_args()
  batches = quantize.calibration_batches(DATASET, batches=args.calibration_batches, batch_size=64)
  rows = {}
  for name in NETWORKS:
    source = trained(name, os.path.join(args.workdir, NETWORKS[name][0]), args.epochs)
    if name == "ResNet-20":
      rows["ResNet-20 (residual)"] = residual_row(source, batches)
      rows["ResNet-20, RM plain"] = plain_row(source, args.calibration_batches)
      recipes = recipe_rows(source, args.calibration_batches)
    else:
      rows[f"{name} (deploy)"] = plain_row(source, args.calibration_batches)
    print(name, rows, flush=True)
  import onnxruntime

  meta = {
    "command": "python scripts/quantization_table.py " + " ".join(sys.argv[1:]),
    "machine": _cpu(),
    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    "ort": onnxruntime.__version__,
    "epochs": args.epochs,
    "batches": args.calibration_batches,
    "recipes": recipes,
  }
  text = markdown(rows, meta)
  page = os.path.join(DOCS, "quantization.md")
  with open(page) as f:
    head, rest = f.read().split(BEGIN, 1)
  atomic.write_text(page, f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")
  plot(rows, os.path.join(DOCS, "quantization.png"))
  print(text)


if __name__ == "__main__":
  main()
