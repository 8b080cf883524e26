"""ONNX Runtime session options and graph forms on the plain networks of bench suites (CPU): the
measurements behind `rmjax.deploy.onnx._session`'s settings (docs/benchmarks.md, "Serving on
CPU"). Every variant runs rmjax's ONNX export of the same dense plain network (checked equal to
the first variant's logits), in turn with the others and the PyTorch eager twin, by
`rmjax.bench.measure.time_batches` (2 warm-up batches, 5 repeats of max(2, 64 / batch) batches).

  python scripts/ort_session_options.py resnet18,repvgg 1,8,128
"""

import statistics
import sys

import numpy as np
import onnxruntime as ort

from rmjax.bench import measure, suites, torch_timing
from rmjax.deploy import onnx as onnx_export

LEVEL = ort.GraphOptimizationLevel
# name -> (input layout, session options): the default first, one change at a time after it.
VARIANTS = {
  "nhwc ALL (current)": ("nhwc", {}),
  "nchw ALL": ("nchw", {}),
  "nhwc EXTENDED (no NCHWc)": ("nhwc", dict(level=LEVEL.ORT_ENABLE_EXTENDED)),
  "nhwc BASIC": ("nhwc", dict(level=LEVEL.ORT_ENABLE_BASIC)),
  "nhwc spin=0": ("nhwc", dict(spin="0")),
  "nhwc arena off": ("nhwc", dict(arena=False)),
  "nhwc parallel": ("nhwc", dict(parallel=True)),
  "nhwc 1 thread": ("nhwc", dict(threads=1)),
}


def session(data, threads=2, level=LEVEL.ORT_ENABLE_ALL, spin=None, arena=True, parallel=False):
  o = ort.SessionOptions()
  o.intra_op_num_threads = threads
  o.inter_op_num_threads = 1
  o.graph_optimization_level = level
  o.enable_cpu_mem_arena = arena
  if parallel:
    o.execution_mode = ort.ExecutionMode.ORT_PARALLEL
  if spin is not None:
    o.add_session_config_entry("session.intra_op.allow_spinning", spin)
  o.log_severity_level = 3
  return ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])


def batches(s, inputs):
  return lambda n: [s.run(None, {"images": inputs}) for _ in range(n)]


def compare(net, models, batch: int) -> None:
  x = np.asarray(measure.images(batch, 32))
  nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
  runs, want = [], None
  for name, (layout, options) in VARIANTS.items():
    s = session(models[layout], **options)
    inputs = x if layout == "nhwc" else nchw
    out = s.run(None, {"images": inputs})[0]
    want = out if want is None else want
    assert np.max(np.abs(out - want)) < 1e-3 * max(1, np.abs(want).max()), name
    runs.append(batches(s, inputs))
  runs.append(torch_timing.inference(net, x)[0])
  protocol = measure.Protocol(warmup=2, batches=max(2, 64 // batch), repeats=5)
  seconds = measure.time_batches(runs, protocol)
  torch = statistics.median(seconds[-1])
  print(f"== {net.name} batch {batch}", flush=True)
  for name, s in zip([*VARIANTS, "torch eager"], seconds, strict=True):
    m = statistics.median(s)
    print(
      f"  {name:28s} {batch / m:8.1f} imgs/s  (min {batch / max(s):.1f} max {batch / min(s):.1f})"
      f"  / torch {torch / m:.2f}",
      flush=True,
    )


def main(suite_names: str, batch_sizes: str) -> None:
  import torch

  torch.set_num_threads(2)
  nets = suites.build(suite_names.split(","), suites.Settings(modes=("dense",)))
  for net in nets:
    if not isinstance(net.model, onnx_export.PlainNet):
      continue
    models = {
      layout: onnx_export.to_onnx(net.model, net.variables, (32, 32, 3), layout=layout)
      for layout in ("nhwc", "nchw")
    }
    models = {layout: m.SerializeToString() for layout, m in models.items()}
    for batch in (int(b) for b in batch_sizes.split(",")):
      compare(net, models, batch)


if __name__ == "__main__":
  main(*sys.argv[1:3])
