"""The ONNX Runtime columns of `bench.py`: each plain network as rmjax exports it, run in ORT.

For a plain network (`isinstance(net.model, PlainNet)`) the artefact is `rmjax.deploy.onnx.to_onnx`
(in memory, in `Options.layout`) or, for a row in structured mode, its structured form
(`rmjax.deploy.onnx_structured`: Dirac copies as Slice + Concat, merged shortcuts as Add), so
that each mode is compared with its own ONNX form. It is loaded as `load_onnx` loads a file
(`rmjax.deploy.onnx._session`: CPU provider, float32, `Options.threads` intra-op threads).
Before it is timed, its logits on the bench batch are checked against the JAX plain network's
(`rmjax.verify`, float32 at "highest" precision): an artefact that differs by more than
`verify.TOLERANCE` x max(1, max |logit|) is refused — not timed — and the row says why
(`onnxruntime_refused`). The bench never reports the speed of a wrong network.

`run(n)` runs n batches (`InferenceSession.run` blocks), which `rmjax.bench.measure` times by
the same protocol as rmjax's XLA execution and the PyTorch twin, taking turns repeat by repeat.

int8: where `rmjax.deploy.quantize.quantize_model` exists, `quantize_model(model, [batch])`
(the serialized float model and the bench batch in its layout as the one calibration batch,
returning the QDQ int8 model's bytes; the recipe of `convert.py --quantize int8`) gives a
second artefact, timed beside the float one
(`onnxruntime_int8_*` columns). Quantization changes the function, so it is held to the looser
`INT8_TOLERANCE` (a bound, not a measurement); a `quantize_model` that raises refuses the int8
columns with its error. Without the module the int8 columns are skipped.

  >>> options = Options(threads=2)
  >>> peers = artefacts(net, x, options)  # {"onnxruntime": {"run", "logits", ...}} or refused
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import numpy as np

from rmjax import verify
from rmjax.models.plain import PlainNet

INSTALL = "pip install 'rmjax[deploy]'"
ENGINE, INT8 = "onnxruntime", "onnxruntime_int8"
# int8 logits differ from float32's by quantization error: refused above this x max(1, max
# |logit|). A sanity bound that catches a broken quantizer, not a statement of int8 accuracy.
INT8_TOLERANCE = 0.1


@dataclasses.dataclass(frozen=True)
class Options:
  """How the artefacts run: intra-op threads, the input layout of the export ("nhwc", as
  `convert.py --export onnx` writes it, or "nchw"), and whether to time an int8 artefact too."""

  threads: int = 2
  layout: str = "nhwc"
  int8: bool = False


def unavailable() -> str | None:
  """Why ONNX Runtime cannot be timed here (with the pip command), or None where it can."""
  for module in ("onnx", "onnxruntime"):
    try:
      importlib.import_module(module)
    except ImportError as e:
      return f"{module} is not installed ({e}): {INSTALL}"
  return None


def quantizer() -> Callable | None:
  """`rmjax.deploy.quantize.quantize_model`, or None where that module or function is absent."""
  try:
    module = importlib.import_module("rmjax.deploy.quantize")
  except ModuleNotFoundError as e:
    if e.name not in ("rmjax.deploy.quantize", "rmjax.deploy"):
      raise  # the module exists but imports something missing: say so, do not hide it
    return None
  return getattr(module, "quantize_model", None)


def int8_unavailable() -> str | None:
  """Why no int8 artefact can be timed, or None where it can."""
  if unavailable() is not None:
    return unavailable()
  if quantizer() is None:
    return "rmjax.deploy.quantize.quantize_model does not exist (yet) in this rmjax"
  return None


def describe(options: Options | None, skipped: dict[str, str]) -> dict:
  """What the report's header states: ORT's version, threads, layout and session settings, and
  each engine skipped (engine -> why, with the pip command where one is missing)."""
  meta = {"engines_skipped": dict(skipped)}
  if options is None:
    return meta
  import onnxruntime

  return {
    **meta,
    "onnxruntime_version": onnxruntime.__version__,
    "onnxruntime_threads": options.threads,
    "onnxruntime_layout": options.layout,
    "onnxruntime_int8": options.int8,
  }


def supports(net) -> bool:
  """Whether `net` has an ONNX artefact: plain networks only (`to_onnx` takes a PlainNet)."""
  return isinstance(net.model, PlainNet)


def structured(net) -> bool:
  """Whether `net`'s artefact is the structured ONNX form (its row runs structured)."""
  return net.mode == "structured"


def _in_layout(x: np.ndarray, layout: str) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))) if layout == "nchw" else x


def _timed(session, inputs: np.ndarray) -> Callable[[int], object]:
  feed = {session.get_inputs()[0].name: inputs}
  return lambda n: [session.run(None, feed) for _ in range(n)]


def _checked(data: bytes, x: np.ndarray, want: np.ndarray, options: Options, tolerance: float):
  """{"run", "logits", "max_abs_logit_diff"} of the model `data`, or {"refused": why}."""
  from rmjax.deploy import onnx as onnx_export

  session = onnx_export._session(data, options.threads)
  inputs = _in_layout(x, options.layout)
  got = session.run(None, {session.get_inputs()[0].name: inputs})[0]
  check = verify.difference(want, got)
  if not verify.within(check, tolerance):
    return {
      "refused": f"its logits differ from the JAX plain network's by {check['max_abs_diff']:.3g} "
      f"(allowed {verify.bound(check, tolerance):.3g}): not timed",
      "max_abs_logit_diff": check["max_abs_diff"],
    }
  return {
    "run": _timed(session, inputs),
    "logits": got,
    "max_abs_logit_diff": check["max_abs_diff"],
  }


def artefacts(net, x: np.ndarray, options: Options) -> dict[str, dict]:
  """The ORT artefacts of plain network `net` on the NHWC bench batch `x`, by engine (ENGINE,
  and INT8 with `options.int8`): each {"run", "logits", "max_abs_logit_diff"} once checked
  against `verify.eval_logits(net.model, net.variables, x)`, else {"refused": why}."""
  from rmjax.deploy import onnx as onnx_export
  from rmjax.deploy import onnx_structured

  x = np.asarray(x, np.float32)
  want = np.asarray(verify.eval_logits(net.model, net.variables, x), np.float32)
  export = onnx_structured.to_structured_onnx if structured(net) else onnx_export.to_onnx
  model = export(net.model, net.variables, x.shape[1:], layout=options.layout)
  found = {ENGINE: _checked(model.SerializeToString(), x, want, options, verify.TOLERANCE)}
  if options.int8:
    found[INT8] = _int8(model, x, want, options)
  return found


def _int8(model, x: np.ndarray, want: np.ndarray, options: Options) -> dict:
  """The int8 artefact of `model` (checked as `_checked`), or {"refused": why} where
  `quantize_model` raised: an optional engine does not stop the benchmark."""
  try:
    data = quantizer()(model.SerializeToString(), [_in_layout(x, options.layout)])
  except Exception as e:  # reported in the row, with its type
    return {"refused": f"quantize_model raised {type(e).__name__}: {e}"}
  return _checked(data, x, want, options, INT8_TOLERANCE)


def columns(row: dict, engines: dict[str, dict], timed: dict[str, dict]) -> dict:
  """The ORT columns of `row` for each engine: imgs/s (median, min, max, repeats: `timed`, the
  speed columns of each engine timed, by engine), `_ratio` (its imgs/s / XLA's), `_torch_ratio`
  (its imgs/s / the PyTorch twin's, where one was timed), `_max_abs_logit_diff` (from the JAX
  plain network) and `_refused` (why it was not timed). All None for a network without."""
  out = {}
  for engine in (ENGINE, INT8):
    peer = engines.get(engine) or {}
    out.update({f"{engine}_{k}": None for k in ("ratio", "torch_ratio")})
    out[f"{engine}_imgs_per_sec"] = None
    out[f"{engine}_max_abs_logit_diff"] = peer.get("max_abs_logit_diff")
    out[f"{engine}_refused"] = peer.get("refused")
    if engine not in timed:
      continue
    out.update(timed[engine])
    imgs = out[f"{engine}_imgs_per_sec"]
    out[f"{engine}_ratio"] = imgs / row["imgs_per_sec"]
    if row.get("torch_imgs_per_sec"):
      out[f"{engine}_torch_ratio"] = imgs / row["torch_imgs_per_sec"]
  return out
