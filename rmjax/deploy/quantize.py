"""Post-training static INT8 of a plain network: a QDQ ONNX model, checked on a test split.

  >>> data, report = quantize_int8(plain, variables, (32, 32, 1), "net.int8.onnx",
  ...                              dataset="fashion_mnist_small")
  >>> report["float32_top1"], report["int8_top1"]      # percent, on the dataset's test split
  >>> logits = onnx.load_onnx("net.int8.onnx")(images)  # NHWC float32 in, float32 logits out

Why ONNX Runtime's QDQ format and not fake-quantisation in JAX: the point of int8 is to serve
the plain network faster and smaller, and XLA has no int8 convolution kernels on CPU, so a JAX
fake-quant model only *simulates* the rounding at float32 speed. A QDQ model (QuantizeLinear /
DequantizeLinear pairs around float ops) is the exchange format the field deploys: ONNX Runtime
fuses each pattern into real int8 kernels (QLinearConv, MLAS/VNNI on x86, faster than float32 on
CPU), and TensorRT and OpenVINO read the same file. The accuracy we report is therefore the
accuracy of the kernels that serve it, not of a simulation of them.

Recipe (`onnxruntime.quantization.quantize_static`): weights symmetric int8 per output channel
(QInt8, `per_channel=True`), activations per tensor, calibrated on `calibration_batches`
unaugmented batches of the dataset's *train* split (never the test split we evaluate on). The
defaults — uint8 activations, MinMax calibration — were chosen by measurement
(docs/quantization.md: on the RM plain ResNet-20 every combination of uint8/int8 activations
and MinMax/Percentile/Entropy calibration lands within one test image of the others, so the
simplest and fastest one). Then float32 and int8 top-1 on the test split; the model is
refused (nothing written, `QuantizationError` naming the drop) when int8 top-1 is more than
`max_drop` points (default `DEFAULT_MAX_DROP` = 1.0) below float32.

RM plain networks: reserved channels (copies of a block's input) share a tensor with the
block's own channels, with a different range (`reserved_ratios` measures it per layer), and a
per-tensor activation scale fits only one of them. With `equalize=True` the reserved channels
are first rescaled to the own channels' range (`rmjax.transforms.equalize`), an exact float32
identity checked here before quantising. Off by default: on the networks of
docs/quantization.md the ranges differ little and equalising did not change top-1 measurably.

The file is written atomically with its SHA-256 digest beside it (`rmjax.integrity`), so
`rmjax.deploy.LOADERS["onnx"]` checks it before reading. Needs `pip install 'rmjax[deploy]'`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

import jax
import numpy as np

from rmjax import atomic, data, integrity, summary, verify
from rmjax.deploy import onnx as onnx_export
from rmjax.models.plain import PlainNet
from rmjax.transforms import equalize as equalize_lib

DEFAULT_MAX_DROP = 1.0  # top-1 percentage points int8 may lose against float32
ACTIVATION_TYPES = ("quint8", "qint8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INSTALL = onnx_export.INSTALL


class QuantizationError(ValueError):
  """A quantisation that cannot be done or that loses more accuracy than allowed."""


def require():
  """`onnxruntime.quantization`, or an ImportError that says how to install it."""
  try:
    import onnx  # noqa: F401
    from onnxruntime import quantization
  except ImportError as e:
    raise ImportError(f"INT8 quantisation needs onnx and onnxruntime ({e}): {INSTALL}") from None
  return quantization


def check_dataset(name: str) -> data.DatasetInfo:
  """The dataset's facts, or a QuantizationError listing the known datasets."""
  try:
    return data.dataset_info(name)
  except ValueError as e:
    raise QuantizationError(f"calibration dataset: {e}") from None


def calibration_batches(name: str, *, batches: int, batch_size: int, data_dir=None):
  """`batches` unaugmented NHWC float32 batches of dataset `name`'s train split (fixed order)."""
  check_dataset(name)
  if batches < 1 or batch_size < 1:
    raise QuantizationError(f"need >= 1 calibration batch of >= 1 image: {batches}x{batch_size}")
  it = data.train_batches(name, batch_size=batch_size, seed=0, augment=False, data_dir=data_dir)
  return [np.asarray(next(it)["image"], np.float32) for _ in range(batches)]


def activation_ranges(plain: PlainNet, variables, batches) -> dict[int, np.ndarray]:
  """`{producer index: max |activation| per channel}` after each activation that
  `equalize.reserved_pairs` names, over `batches` (NHWC)."""
  pairs = equalize_lib.reserved_pairs(plain)
  wanted = {act: i for i, act, _ in pairs}

  @jax.jit
  def maxima(variables, x):
    out = {}
    for k, layer in enumerate(plain.layers[: max(wanted, default=-1) + 1]):
      name = f"layers_{k}"
      own = {col: {"layers_0": t[name]} for col, t in variables.items() if name in t}
      x = PlainNet((layer,)).apply(own, x)
      if k in wanted:
        out[wanted[k]] = jax.numpy.max(jax.numpy.abs(x), axis=(0, 1, 2))
    return out

  ranges = {}
  with jax.default_matmul_precision("highest"):
    for batch in batches:
      for i, m in maxima(variables, batch).items():
        ranges[i] = np.maximum(ranges.get(i, 0.0), np.asarray(m))
  return ranges


def reserved_ratios(plain: PlainNet, ranges) -> list[dict]:
  """Per reserving conv: max |activation| of its reserved channels over its own channels'."""
  rows = []
  for i, act, _ in equalize_lib.reserved_pairs(plain):
    r = plain.layers[i].reserved
    own, reserved = float(np.max(ranges[i][:-r])), float(np.max(ranges[i][-r:]))
    ratio = reserved / max(own, float(np.finfo(np.float32).tiny))
    rows.append({"layer": act, "own": own, "reserved": reserved, "ratio": ratio})
  return rows


class _Reader:
  """An ONNX Runtime `CalibrationDataReader` over a list of NHWC batches."""

  def __init__(self, batches):
    self._batches = iter(batches)

  def get_next(self):
    batch = next(self._batches, None)
    return None if batch is None else {onnx_export.INPUT: batch}


def quantize_model(model_bytes: bytes, batches, *, activations="quint8", method="minmax") -> bytes:
  """The QDQ int8 model of float ONNX model `model_bytes`, calibrated on NHWC `batches`."""
  q = require()
  if activations not in ACTIVATION_TYPES or method not in CALIBRATION_METHODS:
    raise QuantizationError(
      f"activations must be one of {ACTIVATION_TYPES} and method one of {CALIBRATION_METHODS}, "
      f"got {activations!r}, {method!r}"
    )
  # The ORT base class is mixed in here: importing this module must not import onnxruntime.
  reader = type("Reader", (_Reader, q.CalibrationDataReader), {})(batches)
  work = tempfile.mkdtemp(prefix="rmjax-int8-")
  try:
    src, dst = os.path.join(work, "float.onnx"), os.path.join(work, "int8.onnx")
    with open(src, "wb") as f:
      f.write(model_bytes)
    with _without_preprocessing_advice():
      q.quantize_static(
        src,
        dst,
        reader,
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        weight_type=q.QuantType.QInt8,
        activation_type=q.QuantType.QUInt8 if activations == "quint8" else q.QuantType.QInt8,
        calibrate_method={
          "minmax": q.CalibrationMethod.MinMax,
          "percentile": q.CalibrationMethod.Percentile,
          "entropy": q.CalibrationMethod.Entropy,
        }[method],
        extra_options={"WeightSymmetric": True},
      )
    with open(dst, "rb") as f:
      return f.read()
  finally:
    shutil.rmtree(work, ignore_errors=True)


class _NotAdvice(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice():
  """Drops quantize_static's two "Please consider pre-processing" warnings (logged on the root
  logger). Measured on the demo's RM plain ResNet-20 (2026-12-05): ORT's `quant_pre_process`
  (shape inference + graph optimisation) gave the same int8 top-1 (86.05%) and no faster int8
  model, because our graph is already the folded layer table; the advice would only be noise."""
  advice = _NotAdvice()
  logging.getLogger().addFilter(advice)
  try:
    yield
  finally:
    logging.getLogger().removeFilter(advice)


def top1(model_bytes: bytes, dataset: str, *, batch_size=250, data_dir=None, threads=2) -> float:
  """Top-1 accuracy (percent) of an NHWC ONNX model on the dataset's test split."""
  session = onnx_export._session(model_bytes, threads)
  correct = count = 0.0
  batches = data.eval_batches(dataset, batch_size=batch_size, data_dir=data_dir)
  for batch in summary.progress(batches, f"top-1 on the {dataset} test split"):
    logits = session.run(None, {onnx_export.INPUT: batch["image"]})[0]
    correct += float(np.sum((np.argmax(logits, -1) == batch["label"]) * batch["mask"]))
    count += float(np.sum(batch["mask"]))
  return 100.0 * correct / count


def _equalized(plain, variables, ranges, batch, strength):
  """Equalised variables, checked on `batch` to compute the same logits (`rmjax.verify`)."""
  eq = equalize_lib.equalize_reserved(plain, variables, ranges, strength=strength)
  check = verify.difference(
    verify.eval_logits(plain, variables, batch), verify.eval_logits(plain, eq, batch)
  )
  if not verify.within(check, verify.TOLERANCE):
    raise QuantizationError(
      f"equalising reserved channels changed the logits by {check['max_abs_diff']:.3g}"
    )
  return eq


def quantize_int8(
  plain: PlainNet,
  variables,
  input_shape,
  path: str | None = None,
  *,
  dataset: str,
  num_batches: int = 8,
  batch_size: int = 64,
  activations: str = "quint8",
  method: str = "minmax",
  equalize: bool = False,
  strength: float = 1.0,
  max_drop: float = DEFAULT_MAX_DROP,
  data_dir: str | None = None,
) -> tuple[bytes, dict]:
  """Quantises `plain` to a QDQ int8 ONNX model, evaluates it, and writes it to `path` (if given,
  with `path.sha256`) only when int8 top-1 is within `max_drop` points of float32's.

  Returns `(model bytes, report)`; the report holds both top-1s (percent, test split), the drop,
  the recipe, the calibration data and the per-layer reserved/own range ratios.

  Example:
    >>> data, report = quantize_int8(plain, variables, (32, 32, 1), "/tmp/net.int8.onnx",
    ...                              dataset="fashion_mnist_small", num_batches=8)
  """
  require()
  variables = jax.device_get(variables)
  batches = calibration_batches(
    dataset, batches=num_batches, batch_size=batch_size, data_dir=data_dir
  )
  float_bytes = onnx_export.to_onnx(plain, variables, input_shape).SerializeToString()
  ranges = activation_ranges(plain, variables, batches)
  qvars = variables
  if equalize and equalize_lib.reserved_pairs(plain):
    qvars = _equalized(plain, variables, ranges, batches[0], strength)
  q_input = onnx_export.to_onnx(plain, qvars, input_shape).SerializeToString()
  int8 = quantize_model(q_input, batches, activations=activations, method=method)
  report = {
    "float32_top1": top1(float_bytes, dataset, data_dir=data_dir),
    "int8_top1": top1(int8, dataset, data_dir=data_dir),
    "activations": activations,
    "method": method,
    "equalized": bool(equalize and equalize_lib.reserved_pairs(plain)),
    "calibration": {"dataset": dataset, "split": "train", "batches": len(batches)},
    "calibration_examples": sum(len(b) for b in batches),
    "reserved_ratios": reserved_ratios(plain, ranges),
    "max_drop": max_drop,
  }
  report["drop"] = report["float32_top1"] - report["int8_top1"]
  if report["drop"] > max_drop:
    raise QuantizationError(
      f"int8 top-1 {report['int8_top1']:.2f}% vs float32 {report['float32_top1']:.2f}% on the "
      f"{dataset} test split: a drop of {report['drop']:.2f} points, over the allowed "
      f"{max_drop:g}; nothing was written"
    )
  if path is not None:
    publish(int8, path)
    report["path"] = os.path.abspath(path)
  return int8, report


def publish(model_bytes: bytes, path: str) -> None:
  """Writes `model_bytes` to `path` and its SHA-256 digest to `path.sha256` (`rmjax.integrity`):
  both staged under the final name in a directory beside `path`, then renamed into place."""
  path = os.path.abspath(path)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
  try:
    tmp = os.path.join(staging, os.path.basename(path))
    with open(tmp, "wb") as f:
      f.write(model_bytes)
    digest = integrity.seal(tmp)
    atomic.replace(tmp, path)
    atomic.replace(digest, integrity.digest_file(path))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
