"""ONNX Runtime on RMNet-18's structured ONNX form (rmjax.deploy.onnx_structured) beside the
residual ResNet-18 it was converted from (torch.onnx.export of its PyTorch twin, same weights)
and PyTorch eager, in turn (`rmjax.bench.measure.time_batches`: 2 warm-up batches, 3 repeats of
max(2, 64 / batch) batches): how much the structured form's Slice/Concat costs in ORT against a
conv + add graph (docs/benchmarks.md, "Serving on CPU").

  python scripts/ort_residual_form.py 32,128
"""

import io
import statistics
import sys

import numpy as np
import torch

from rmjax.bench import measure, suites, torch_timing, torch_twins
from rmjax.deploy import onnx as onnx_export
from rmjax.deploy import onnx_structured


def batches(session, inputs):
  return lambda n: [session.run(None, {"images": inputs}) for _ in range(n)]


def main(batch_sizes: str) -> None:
  torch.set_num_threads(2)
  residual, _, structured = suites.build(["resnet18"])
  buffer = io.BytesIO()
  x = torch_twins.to_nchw(np.asarray(measure.images(1, 32)))
  twin = torch_twins.twin(residual).eval()
  axes = {"images": {0: "batch"}}
  torch.onnx.export(twin, x, buffer, input_names=["images"], dynamic_axes=axes, dynamo=False)
  plain = onnx_structured.to_structured_onnx(
    structured.model, structured.variables, (32, 32, 3), layout="nchw"
  )
  models = {
    "ORT residual ResNet-18 (torch export)": buffer.getvalue(),
    "ORT RMNet-18 structured (rmjax)": plain.SerializeToString(),
  }
  for batch in (int(b) for b in batch_sizes.split(",")):
    x = np.asarray(measure.images(batch, 32))
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    runs = {name: batches(onnx_export._session(m, 2), nchw) for name, m in models.items()}
    runs["torch eager ResNet-18"] = torch_timing.inference(residual, x)[0]
    protocol = measure.Protocol(warmup=2, batches=max(2, 64 // batch), repeats=3)
    seconds = measure.time_batches(list(runs.values()), protocol)
    print(f"== batch {batch}", flush=True)
    for name, s in zip(runs, seconds, strict=True):
      print(
        f"  {name:40s} {batch / statistics.median(s):8.1f} imgs/s "
        f"(min {batch / max(s):.1f} max {batch / min(s):.1f})",
        flush=True,
      )


if __name__ == "__main__":
  main(sys.argv[1])
