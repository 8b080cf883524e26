"""A training run -> a verified plain network on disk (what `python convert.py CKPT PLAIN` does).

  >>> run = load_run("workdirs/demo")                 # config, model, variables of a checkpoint
  >>> report = export_plain(run, "workdirs/demo/plain", keep_bn=False, tolerance=1e-4)
  >>> print(format_report(report))

Imported weights (`convert.py --from_torch/--from_keras`) go the same way: `load_imported`
gives a `Run` whose "original" is the rmjax model with the imported weights. With `exports`,
serving artefacts (`rmjax.deploy.jax_formats`) are written next to PLAIN, checked against it, and
only put in place together with it.

Every failure is an `ExportError` (a ValueError) with a message for the user: the CLI prints it
as one paragraph, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rmjax import checkpoint, data, interop, plain_io, train, transforms
from rmjax.deploy import jax_formats
from rmjax.testing import count_macs, count_params


class ExportError(ValueError):
  """A conversion that cannot be done, with the reason in words."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One checkpoint of a training run (or imported weights), ready to convert or evaluate."""

  workdir: str  # imported weights: the weight file
  step: int | None
  config: Any  # ml_collections.ConfigDict, as saved in the workdir's config.json; None if imported
  model: Any
  variables: dict
  input_shape: tuple[int, int, int]
  origin: dict | None = None  # imported weights: where from (plain.json's `source`)

  @property
  def name(self) -> str:
    """The architecture's name, for messages."""
    return self.origin["model"] if self.origin else self.config.model

  def provenance(self) -> dict[str, Any]:
    """Where the network came from, for plain.json's `source`."""
    if self.origin:
      return dict(self.origin)
    return {
      "workdir": self.workdir,
      "step": self.step,
      "model": self.config.model,
      "dataset": self.config.dataset,
      "config": self.config.to_dict(),
    }


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
  """`(workdir, step)` for a training workdir (step None = latest) or one of its step dirs."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise ExportError(f"{path} does not exist: give a workdir written by train.py")
  if not os.path.isdir(path):
    raise ExportError(f"{path} is a file; give a workdir written by train.py")
  if os.path.exists(os.path.join(path, "config.json")):
    return path, None
  parent = os.path.dirname(path)  # <workdir>/checkpoints/<step>
  workdir = os.path.dirname(parent)
  name = os.path.basename(path)
  if os.path.basename(parent) == "checkpoints" and name.isdigit():
    if os.path.exists(os.path.join(workdir, "config.json")):
      return workdir, int(name)
  raise ExportError(
    f"{path} is not a training workdir (no config.json) nor a step directory "
    "<workdir>/checkpoints/<step> of one"
  )


def load_run(path: str) -> Run:
  """The config, model and variables (params + batch_stats) of the checkpoint at `path`."""
  workdir, step = resolve_checkpoint(path)
  try:
    config = train.load_config_json(workdir)
  except (OSError, ValueError) as e:
    raise ExportError(f"{workdir}/config.json cannot be read: {e}") from None
  try:
    info = data.dataset_info(config.dataset)
    model = train.create_model(config, info.num_classes)
  except (ValueError, KeyError, AttributeError) as e:
    raise ExportError(f"the config saved in {workdir} does not build a model: {e}") from None
  mngr = checkpoint.manager(workdir)
  steps = mngr.all_steps()
  if not steps:
    raise ExportError(f"{workdir} has no checkpoint yet (no {workdir}/checkpoints/<step>/)")
  step = max(steps) if step is None else step
  if step not in steps:
    raise ExportError(f"{workdir} has no complete checkpoint of step {step}; it has {steps}")
  try:
    # No target: the raw arrays, then checked against the model (check_variables names paths).
    state = mngr.restore(step, args=ocp.args.StandardRestore())
  except Exception as e:  # orbax raises many types for a damaged checkpoint
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ExportError(
      f"the checkpoint {workdir}/checkpoints/{step} cannot be read (corrupt or truncated?): {first}"
    ) from None
  if not isinstance(state, dict) or "params" not in state:
    raise ExportError(f"the checkpoint {workdir}/checkpoints/{step} holds no params")
  variables = {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
  try:
    transforms.check_variables(model, variables)
  except ValueError as e:
    raise ExportError(
      f"the checkpoint of step {step} does not match the model its config describes "
      f"({config.model}): {e}"
    ) from None
  size = config.get("image_size") or info.image_size
  return Run(workdir, step, config, model, variables, (size, size, info.channels))


def load_imported(
  weights: str, *, torch_arch: str | None = None, input_size: int | None = None
) -> Run:
  """A `Run` of imported weights: torchvision-layout PyTorch ones with `torch_arch` (ResNet or
  MobileNetV2), else a Keras MobileNetV2 (.h5/.keras). The check batch has `input_size` square
  images (default: the Keras file's input shape, else 224)."""
  path = os.path.abspath(weights)
  try:
    if torch_arch is not None:
      imported, framework = interop.import_torch(torch_arch, path), "torch"
    else:
      imported, framework = interop.import_keras(path), "keras"
  except interop.WeightImportError as e:
    raise ExportError(str(e)) from None
  if input_size is not None:
    if input_size < 32:
      raise ExportError(
        f"--input_size must be at least 32 (the networks' stride), got {input_size}"
      )
    shape = (input_size, input_size, 3)
  else:
    shape = imported.input_shape or (224, 224, 3)
  origin = {
    "imported_from": path,
    "framework": framework,
    "model": imported.name,
    "num_classes": imported.model.num_classes,
    "dataset": None,
    "notes": list(imported.notes),
  }
  return Run(path, None, None, imported.model, imported.variables, shape, origin)


def _sizes(apply_fn, variables, input_shape) -> tuple[int, int]:
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return count_params(variables["params"]), count_macs(apply_fn, variables, x)


def _compare(run: Run, plain, plain_vars, images) -> dict[str, float]:
  with jax.default_matmul_precision("highest"):
    a = jax.jit(lambda v, x: run.model.apply(v, x, train=False))(run.variables, images)
    b = jax.jit(plain.apply)(plain_vars, images)
  return _difference(np.asarray(a), np.asarray(b))


def _difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
  return {
    "max_abs_diff": float(np.max(np.abs(a - b))),
    "logit_scale": float(np.max(np.abs(a))),
    "top1_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1))),
    "examples": int(a.shape[0]),
  }


def export_plain(
  run: Run,
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
) -> dict[str, Any]:
  """Converts `run`, checks it, and writes `plain_dir` atomically; returns the report.

  The check runs both networks on `check_batch` random N(0, 1) inputs (the scale of normalised
  images) and, with `eval_dataset`, on one real test batch. The conversion is refused when
  `max |logit difference| > tolerance * max(1, max |logit|)`: a relative bound for logits of
  magnitude above 1, an absolute one below.

  `exports` (formats of `rmjax.deploy.jax_formats`) are written next to `plain_dir`
  (`jax_formats.artefact_path`), reloaded and held to the same bound against the plain
  network on the random batch; they and PLAIN are put in place only when all passed.
  """
  if not tolerance >= 0:
    raise ExportError(f"the tolerance must be >= 0, got {tolerance}")
  plain_dir = os.path.abspath(plain_dir)
  check_writable(plain_dir, overwrite, exports)
  try:
    convert = jax.jit(
      transforms.rm_convert,
      static_argnums=0,
      static_argnames=("keep_bn", "dense_reserve", "fuse"),
    )
    plain, plain_vars = convert(
      run.model, run.variables, keep_bn=keep_bn, dense_reserve=dense_reserve, fuse=fuse
    )
  except ValueError as e:
    raise ExportError(f"{run.name} cannot be converted: {e}") from None
  images = jax.random.normal(jax.random.key(0), (check_batch, *run.input_shape), jnp.float32)
  checks = {"random": _compare(run, plain, plain_vars, images)}
  if eval_dataset:
    try:
      batch = next(iter(data.eval_batches(eval_dataset, batch_size=64, data_dir=data_dir)))
    except (ValueError, FileNotFoundError) as e:
      raise ExportError(f"--eval_dataset {eval_dataset}: {e}") from None
    real = batch["image"][batch["mask"] > 0]
    if real.shape[1:] != run.input_shape:
      raise ExportError(
        f"--eval_dataset {eval_dataset} has images of shape {real.shape[1:]}, the model takes "
        f"{run.input_shape}"
      )
    checks[eval_dataset] = _compare(run, plain, plain_vars, jnp.asarray(real))
  report = {
    "checks": checks,
    "tolerance": tolerance,
    "before": _sizes(
      lambda v, x: run.model.apply(v, x, train=False), run.variables, run.input_shape
    ),
    # The dense form's size (structured execution, the CPU's default, skips the Dirac zeros).
    "after": _sizes(functools.partial(plain.apply, structured=False), plain_vars, run.input_shape),
    "plain": plain,
    "plain_dir": plain_dir,
  }
  for name, c in checks.items():
    bound = tolerance * max(1.0, c["logit_scale"])
    if not c["max_abs_diff"] <= bound:
      raise ExportError(
        f"the plain network differs from the original on the {name} batch by "
        f"{c['max_abs_diff']:.3g} (max |logit| {c['logit_scale']:.3g}, allowed "
        f"{bound:.3g} = tolerance {tolerance:g} x max(1, max |logit|)); nothing was written.\n"
        + format_report(report)
      )
  source = {
    **run.provenance(),
    "keep_bn": keep_bn,
    "dense_reserve": dense_reserve,
    "fuse": fuse,
    "checks": checks,
  }
  staging = None
  try:
    if exports:
      # Beside PLAIN, so that moving the artefacts into place is a rename.
      os.makedirs(os.path.dirname(plain_dir), exist_ok=True)
      staging = tempfile.mkdtemp(
        prefix=f".{os.path.basename(plain_dir)}.exports-", dir=os.path.dirname(plain_dir)
      )
    staged = _stage_exports(exports, plain, plain_vars, run.input_shape, images, staging, report)
    plain_io.save_plain(
      plain_dir,
      plain,
      plain_vars,
      input_shape=run.input_shape,
      source=source,
      overwrite=overwrite,
    )
    for tmp, final in staged:
      jax_formats.replace(tmp, final)
  except OSError as e:
    raise ExportError(f"cannot write {plain_dir}: {e}") from None
  finally:
    if staging:
      shutil.rmtree(staging, ignore_errors=True)
  return report


def _stage_exports(formats, plain, plain_vars, input_shape, images, staging, report):
  """Writes each format into `staging`, reloads it and compares it with the plain network on
  `images`; returns `(staged path, final path)` pairs. Adds `report["exports"]`."""
  if not formats:
    return []
  with jax.default_matmul_precision("highest"):
    want = np.asarray(jax.jit(plain.apply)(plain_vars, images))
  report["exports"] = {}
  staged = []
  for fmt in formats:
    final = jax_formats.artefact_path(report["plain_dir"], fmt)
    tmp = os.path.join(staging, os.path.basename(final))
    try:
      jax_formats.EXPORTERS[fmt](plain, plain_vars, input_shape, tmp)
      got = np.asarray(jax_formats.LOADERS[fmt](tmp)(np.asarray(images)))
    except Exception as e:  # jax.export / TensorFlow errors: name the format, write nothing
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ExportError(
        f"the {fmt} export failed ({type(e).__name__}: {first}); nothing was written"
      ) from None
    c = _difference(want, got)
    report["exports"][fmt] = {"path": final, **c}
    bound = report["tolerance"] * max(1.0, c["logit_scale"])
    if not c["max_abs_diff"] <= bound:
      raise ExportError(
        f"the {fmt} export differs from the plain network by {c['max_abs_diff']:.3g} (allowed "
        f"{bound:.3g}); nothing was written"
      )
    staged.append((tmp, final))
  return staged


def check_writable(plain_dir: str, overwrite: bool, exports: tuple[str, ...] = ()) -> None:
  """Fails before any work if `plain_dir` or an export's artefact exists (without overwrite),
  an export format is unknown, or `plain_dir` cannot be created."""
  unknown = [fmt for fmt in exports if fmt not in jax_formats.FORMATS]
  if unknown:
    raise ExportError(
      f"unknown export format(s) {', '.join(map(repr, unknown))}; known: "
      f"{', '.join(jax_formats.FORMATS)}"
    )
  targets = [plain_dir] + [jax_formats.artefact_path(plain_dir, fmt) for fmt in exports]
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
      f"{c['top1_agreement']:>14.2%}"
    )
  for fmt, c in report.get("exports", {}).items():
    lines.append(
      f"{fmt + ' file':16}{c['examples']:>10}{c['max_abs_diff']:>14.3g}{c['logit_scale']:>14.3g}"
      f"{c['top1_agreement']:>14.2%}  (vs plain) {c['path']}"
    )
  lines.append(
    f"tolerance {report['tolerance']:g} x max(1, max |logit|) on max |diff| (relative to the"
    " logit scale above 1)"
  )
  return "\n".join(lines)


# --- evaluation of checkpoints and plain directories ----------------------------------------


def load_for_eval(path: str):
  """`(description, apply_fn, variables, dataset)` of a training run or a PLAIN directory."""
  if os.path.exists(os.path.join(path, plain_io.ARCH_FILE)):
    try:
      plain, variables = plain_io.load_plain(path)
      source = plain_io.read_arch(path).get("source", {})
    except plain_io.PlainFormatError as e:
      raise ExportError(str(e)) from None
    return f"plain ({len(plain.layers)} layers)", plain.apply, variables, source.get("dataset")
  run = load_run(path)
  description = f"{run.config.model} step {run.step}"
  return description, train.eval_apply_fn(run.model), run.variables, run.config.dataset


def evaluate_paths(paths, *, dataset=None, batch_size=256, data_dir=None):
  """Top-1/top-5 of each training run or PLAIN directory in `paths` on the same test split:
  a list of rows `{path, what, dataset, top1, top5, loss, examples}`."""
  mesh = train.Mesh.create(jax.devices()[:1])
  rows = []
  for path in paths:
    what, apply_fn, variables, own_dataset = load_for_eval(os.path.abspath(path))
    name = dataset or own_dataset
    if not name:
      raise ExportError(f"{path} does not say which dataset it was trained on; pass --dataset")

    def batches(name=name):
      return data.eval_batches(name, batch_size=batch_size, data_dir=data_dir)

    try:
      metrics = train.evaluate(apply_fn, variables, batches(), mesh)
    except (FileNotFoundError, ValueError) as e:
      raise ExportError(f"evaluating {path} on {name}: {e}") from None
    rows.append({"path": path, "what": what, "dataset": name, **metrics})
  return rows


def format_eval_table(rows) -> str:
  lines = [f"{'path':40} {'network':28} {'dataset':20} {'top-1':>8} {'top-5':>8} {'examples':>9}"]
  for r in rows:
    lines.append(
      f"{r['path'][-40:]:40} {r['what'][:28]:28} {r['dataset'][:20]:20} {r['top1']:>8.2%} "
      f"{r['top5']:>8.2%} {r['examples']:>9}"
    )
  return "\n".join(lines)
