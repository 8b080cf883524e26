"""A training run -> a verified plain network on disk (what `python convert.py CKPT PLAIN` does).

  >>> source = run.load_run("workdirs/demo")          # config, model, variables of a checkpoint
  >>> report = export_plain(source, "workdirs/demo/plain", keep_bn=False, tolerance=1e-4)
  >>> print(format_report(report))

Imported weights (`convert.py --from_torch/--from_keras`) go the same way: `run.load_imported`
gives a `Run` whose "original" is the rmjax model with the imported weights. With `exports`,
serving artefacts (`rmjax.deploy`) are written next to PLAIN, checked against it, and
only put in place together with it.

Every failure is an `ExportError` (a ValueError) with a message for the user: the CLI prints it
as one paragraph, never a traceback.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rmjax import atomic, data, deploy, integrity, plain_io, run, transforms, verify
from rmjax.cost import count_macs, count_params
from rmjax.deploy import quantize as quantize_lib

INT8 = "int8.onnx"  # `PLAIN.int8.onnx`, beside `PLAIN.onnx`


class ExportError(ValueError):
  """A conversion that cannot be done, with the reason in words."""


def _sizes(apply_fn, variables, input_shape) -> tuple[int, int]:
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return count_params(variables["params"]), count_macs(apply_fn, variables, x)


def _compare(source: run.Run, plain, plain_vars, images, features=False) -> dict[str, float]:
  return verify.difference(
    verify.eval_logits(source.model, source.variables, images, features=features),
    verify.eval_logits(plain, plain_vars, images, features=features),
  )


def export_plain(
  source: run.Run,
  plain_dir: str,
  *,
  keep_bn: bool = False,
  tolerance: float = 1e-4,
  eval_dataset: str | None = None,
  data_dir: str | None = None,
  overwrite: bool = False,
  dense_reserve: bool = False,
  fuse: bool = True,
  check_batch: int = 8,
  exports: tuple[str, ...] = (),
  features: bool = False,
  quantize: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Converts `source`, checks it, and writes `plain_dir` atomically; returns the report.

  The check runs both networks on `check_batch` random N(0, 1) inputs (the scale of normalised
  images) and, with `eval_dataset`, on one real test batch. The conversion is refused when
  `max |logit difference| > tolerance * max(1, max |logit|)`: a relative bound for logits of
  magnitude above 1, an absolute one below.

  `exports` (formats of `rmjax.deploy`) are written next to `plain_dir`
  (`deploy.artefact_path`), reloaded and held to the same bound against the plain
  network on the random batch; they and PLAIN are put in place only when all passed.

  `features` (backbone mode): PLAIN records the model's feature taps
  (`rm_convert(..., features=True)`), every check compares the feature maps (each map by the
  rule on its own scale), and the exports compute the maps, one output per tap.

  `quantize` (keyword arguments of `deploy.quantize.quantize_int8`, `dataset` among them): also
  `PLAIN.int8.onnx`, post-training int8, refused when its test top-1 drops too far; staged and
  put in place with the other artefacts (`report["int8"]`).
  """
  if not tolerance >= 0:
    raise ExportError(f"the tolerance must be >= 0, got {tolerance}")
  plain_dir = os.path.abspath(plain_dir)
  check_writable(plain_dir, overwrite, exports, quantize=quantize is not None)
  options = {"keep_bn": keep_bn, "dense_reserve": dense_reserve, "fuse": fuse}
  plain, plain_vars = _convert(source, features=features, **options)
  images = jax.random.normal(jax.random.key(0), (check_batch, *source.input_shape), jnp.float32)
  checks = {"random": _compare(source, plain, plain_vars, images, features)}
  if eval_dataset:
    real = _real_batch(source, eval_dataset, data_dir)
    checks[eval_dataset] = _compare(source, plain, plain_vars, real, features)
  report = {
    "checks": checks,
    "tolerance": tolerance,
    "before": _sizes(
      lambda v, x: source.model.apply(v, x, train=False), source.variables, source.input_shape
    ),
    # The dense form's size (structured execution, the CPU's default, skips the Dirac zeros).
    "after": _sizes(
      functools.partial(plain.apply, structured=False), plain_vars, source.input_shape
    ),
    "plain": plain,
    "plain_dir": plain_dir,
    "features": features,
    "quantize": quantize,
  }
  _refuse_differences(report)
  provenance = {
    **source.provenance(),
    **options,
    **({"features": True} if features else {}),
    "checks": checks,
  }
  _write(report, plain_vars, source.input_shape, images, exports, provenance, overwrite)
  return report


def _convert(source: run.Run, **options):
  """`rm_convert` of the source, its failures as ExportError."""
  try:
    plain, plain_vars = transforms.rm_convert_jit(source.model, source.variables, **options)
  except (ValueError, TypeError) as e:  # TypeError: a model without feature taps
    raise ExportError(f"{source.name} cannot be converted: {e}") from None
  if options["features"] and not plain.taps:
    raise ExportError(f"{source.name} is a plain network without feature taps: no features")
  return plain, plain_vars


def _real_batch(source: run.Run, eval_dataset: str, data_dir: str | None):
  """The real images of the first test batch of `eval_dataset`, checked to fit the model."""
  try:
    batch = next(iter(data.eval_batches(eval_dataset, batch_size=64, data_dir=data_dir)))
  except (ValueError, FileNotFoundError) as e:
    raise ExportError(f"--eval_dataset {eval_dataset}: {e}") from None
  real = batch["image"][batch["mask"] > 0]
  if real.shape[1:] != source.input_shape:
    raise ExportError(
      f"--eval_dataset {eval_dataset} has images of shape {real.shape[1:]}, the model takes "
      f"{source.input_shape}"
    )
  return jnp.asarray(real)


def _refuse_differences(report: dict[str, Any]) -> None:
  """ExportError (with the report) when a check is outside the tolerance."""
  tolerance = report["tolerance"]
  for name, c in report["checks"].items():
    if not verify.within(c, tolerance):
      bound = verify.bound(c, tolerance)
      raise ExportError(
        f"the plain network differs from the original on the {name} batch by "
        f"{c['max_abs_diff']:.3g} (max |logit| {c['logit_scale']:.3g}, allowed "
        f"{bound:.3g} = tolerance {tolerance:g} x max(1, max |logit|)); nothing was written.\n"
        + format_report(report)
      )


def _write(report, plain_vars, input_shape, images, exports, provenance, overwrite) -> None:
  """Stages and checks the exports, writes PLAIN, then moves the exports into place: all or
  nothing."""
  plain, plain_dir = report["plain"], report["plain_dir"]
  staging = None
  try:
    if exports or report["quantize"] is not None:
      # Beside PLAIN, so that moving the artefacts into place is a rename.
      os.makedirs(os.path.dirname(plain_dir), exist_ok=True)
      staging = tempfile.mkdtemp(
        prefix=f".{os.path.basename(plain_dir)}.exports-", dir=os.path.dirname(plain_dir)
      )
    staged = _stage_exports(exports, plain, plain_vars, input_shape, images, staging, report)
    staged += _stage_int8(report, plain_vars, input_shape, staging)
    plain_io.save_plain(
      plain_dir, plain, plain_vars, input_shape=input_shape, source=provenance, overwrite=overwrite
    )
    for tmp, final in staged:
      atomic.replace(tmp, final)
  except OSError as e:
    raise ExportError(f"cannot write {plain_dir}: {e}") from None
  finally:
    if staging:
      shutil.rmtree(staging, ignore_errors=True)


def _stage_exports(formats, plain, plain_vars, input_shape, images, staging, report):
  """Writes each format into `staging`, reloads it and compares it with the plain network on
  `images`; returns `(staged path, final path)` pairs. Adds `report["exports"]`."""
  if not formats:
    return []
  features = report["features"]
  want = verify.eval_logits(plain, plain_vars, images, features=features)
  report["exports"] = {}
  staged = []
  for fmt in formats:
    final = deploy.artefact_path(report["plain_dir"], fmt)
    tmp = os.path.join(staging, os.path.basename(final))
    try:
      deploy.EXPORTERS[fmt](plain, plain_vars, input_shape, tmp, **_features(features))
      got = deploy.LOADERS[fmt](tmp)(np.asarray(images))
      got = tuple(map(np.asarray, got)) if features else np.asarray(got)
    except Exception as e:  # jax.export / TensorFlow / ONNX errors: name the format, write nothing
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ExportError(
        f"the {fmt} export failed ({type(e).__name__}: {first}); nothing was written"
      ) from None
    c = verify.difference(want, got)
    report["exports"][fmt] = {"path": final, **c}
    if not verify.within(c, report["tolerance"]):
      raise ExportError(
        f"the {fmt} export differs from the plain network by {c['max_abs_diff']:.3g} (allowed "
        f"{verify.bound(c, report['tolerance']):.3g}); nothing was written"
      )
    staged += _with_digest(tmp, final)
  return staged


def _stage_int8(report, plain_vars, input_shape, staging) -> list[tuple[str, str]]:
  """With `report["quantize"]`: the int8 model written into `staging` (with its digest), or an
  ExportError saying why not (too large a drop, no onnxruntime). Adds `report["int8"]`."""
  if report["quantize"] is None:
    return []
  final = deploy.artefact_path(report["plain_dir"], INT8)
  tmp = os.path.join(staging, os.path.basename(final))
  try:
    _, result = quantize_lib.quantize_int8(
      report["plain"], plain_vars, input_shape, tmp, **report["quantize"]
    )
  except (quantize_lib.QuantizationError, ImportError, FileNotFoundError) as e:
    raise ExportError(f"int8: {e}") from None
  report["int8"] = {**result, "path": final}
  return _with_digest(tmp, final)


def _with_digest(tmp: str, final: str) -> list[tuple[str, str]]:
  """`(staged, final)` pairs of an artefact and, for a file, of the digest beside it (a
  directory holds its own; `rmjax.integrity`)."""
  if os.path.isfile(tmp):
    return [(tmp, final), (integrity.digest_file(tmp), integrity.digest_file(final))]
  return [(tmp, final)]


def _features(features: bool) -> dict[str, bool]:
  # Only where asked: an exporter registered without the keyword still serves logits.
  return {"features": True} if features else {}


def check_writable(
  plain_dir: str, overwrite: bool, exports: tuple[str, ...] = (), *, quantize: bool = False
) -> None:
  """Fails before any work if `plain_dir` or an export's artefact (with `quantize`, also
  `PLAIN.int8.onnx`) exists (without overwrite), an export format is unknown, or `plain_dir`
  cannot be created."""
  unknown = [fmt for fmt in exports if fmt not in deploy.FORMATS]
  if unknown:
    raise ExportError(
      f"unknown export format(s) {', '.join(map(repr, unknown))}; known: "
      f"{', '.join(deploy.FORMATS)}"
    )
  targets = [plain_dir] + [deploy.artefact_path(plain_dir, fmt) for fmt in exports]
  targets += [deploy.artefact_path(plain_dir, INT8)] if quantize else []
  for target in targets:
    if os.path.exists(target) and not overwrite:
      raise ExportError(f"{target} already exists; pass --overwrite to replace it")
  parent = os.path.dirname(plain_dir)
  existing = parent
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise ExportError(f"cannot write {plain_dir}: {existing} is not a writable directory")


def format_report(report: dict[str, Any]) -> str:
  (p0, f0), (p1, f1) = report["before"], report["after"]
  lines = [
    f"{'':16}{'params':>14}{'FLOPs (MACs)':>18}",
    f"{'original':16}{p0:>14,}{f0:>18,}",
    f"{'plain':16}{p1:>14,}{f1:>18,}",
    "",
    f"{'check batch':16}{'examples':>10}{'max |diff|':>14}{'max |logit|':>14}{'top-1 agree':>14}",
  ]
  for name, c in report["checks"].items():
    lines.append(
      f"{name:16}{c['examples']:>10}{c['max_abs_diff']:>14.3g}{c['logit_scale']:>14.3g}"
      f"{_agreement(c)}"
    )
  for fmt, c in report.get("exports", {}).items():
    lines.append(
      f"{fmt + ' file':16}{c['examples']:>10}{c['max_abs_diff']:>14.3g}{c['logit_scale']:>14.3g}"
      f"{_agreement(c)}  (vs plain) {c['path']}"
    )
  if report.get("int8"):
    q = report["int8"]
    lines.append(
      f"int8 file: test top-1 {q['int8_top1']:.2f}% vs float32 {q['float32_top1']:.2f}% (drop "
      f"{q['drop']:.2f} points, allowed {q['max_drop']:g}; calibrated on "
      f"{q['calibration_examples']} {q['calibration']['dataset']} train images) {q['path']}"
    )
  if report.get("features"):
    lines.append(
      f"features: the outputs of layers {', '.join(map(str, report['plain'].taps))}; each row "
      "is the worst map's (max |logit| = that map's max |value|)"
    )
  lines.append(
    f"tolerance {report['tolerance']:g} x max(1, max |logit|) on max |diff| (relative to the"
    " logit scale above 1)"
  )
  return "\n".join(lines)


def _agreement(c: dict[str, Any]) -> str:
  """The top-1 column: agreement for logits; for feature maps, which map the row is."""
  if "map" in c:
    return f"{'map ' + str(c['map']):>14}"
  return f"{c['top1_agreement']:>14.2%}"


# --- evaluation of checkpoints and plain directories ----------------------------------------
