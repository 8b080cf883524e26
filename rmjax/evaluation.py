"""Top-1/top-5 accuracy and loss of a network on a test split, over a device mesh.

What training evaluates with, and what `python evaluate.py` runs on training runs and PLAIN
directories side by side on the same split:

  >>> rows = evaluate_paths(["workdirs/demo", "workdirs/demo/plain"])
  >>> print(format_eval_table(rows))
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import optax

from rmjax import data, plain_io, run, summary
from rmjax.mesh import Mesh


def eval_sums(logits, batch):
  """Sums over the real (mask == 1) examples: loss, top-1 and top-5 correct, count."""
  mask = batch["mask"]
  label = batch["label"]
  k = min(5, logits.shape[-1])
  top_k = jax.lax.top_k(logits, k)[1]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, label)
  return {
    "loss": jnp.sum(loss * mask),
    "top1": jnp.sum((top_k[:, 0] == label) * mask),
    "top5": jnp.sum(jnp.any(top_k == label[:, None], axis=-1) * mask),
    "count": jnp.sum(mask),
  }


def eval_step(variables, batch, *, apply_fn):
  return eval_sums(apply_fn(variables, batch["image"]), batch)


def accumulate(totals, sums):
  """Adds a batch's `sums` to running `totals` (None at the start)."""
  return sums if totals is None else jax.tree.map(jnp.add, totals, sums)


def eval_metrics_from(totals) -> dict[str, float]:
  """Top-1/top-5 accuracy, mean loss and example count from summed `eval_sums`."""
  if totals is None:
    raise ValueError("the evaluation split yielded no batches")
  count = float(totals["count"])
  return {
    "top1": float(totals["top1"]) / count,
    "top5": float(totals["top5"]) / count,
    "loss": float(totals["loss"]) / count,
    "examples": int(count),
  }


def evaluate(
  apply_fn, variables, batches, mesh: Mesh, total: int | None = None
) -> dict[str, float]:
  """Top-1/top-5 accuracy and loss of `apply_fn(variables, images)` over `batches` (`total` of
  them, if known: for the progress report)."""
  step = jax.jit(functools.partial(eval_step, apply_fn=apply_fn), out_shardings=mesh.replicated)
  totals = None
  for local in summary.progress(batches, "evaluating", total):
    totals = accumulate(totals, step(variables, mesh.global_batch(local)))
  return eval_metrics_from(totals)


def eval_batches_for(config, info: data.DatasetInfo):
  """A function returning a fresh pass over this process's share of the config's test split."""
  return functools.partial(
    data.eval_batches,
    config.dataset,
    batch_size=config.batch_size // jax.process_count(),
    image_size=config.image_size or info.image_size,
    data_dir=config.data_dir,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def eval_apply_fn(model):
  return lambda variables, x: model.apply(variables, x, train=False)


def load_for_eval(path: str):
  """`(description, apply_fn, variables, dataset)` of a training run or a PLAIN directory."""
  if os.path.exists(os.path.join(path, plain_io.ARCH_FILE)):
    try:
      plain, variables = plain_io.load_plain(path)
      source = plain_io.read_arch(path).get("source", {})
    except plain_io.PlainFormatError as e:
      raise run.RunError(str(e)) from None
    return f"plain ({len(plain.layers)} layers)", plain.apply, variables, source.get("dataset")
  loaded = run.load_run(path)
  description = f"{loaded.config.model} step {loaded.step}"
  return description, eval_apply_fn(loaded.model), loaded.variables, loaded.config.dataset


def evaluate_paths(paths, *, dataset=None, batch_size=256, data_dir=None):
  """Top-1/top-5 of each training run or PLAIN directory in `paths` on the same test split:
  a list of rows `{path, what, dataset, top1, top5, loss, examples}`."""
  mesh = Mesh.create(jax.devices()[:1])
  rows = []
  for path in paths:
    what, apply_fn, variables, own_dataset = load_for_eval(os.path.abspath(path))
    name = dataset or own_dataset
    if not name:
      raise run.RunError(f"{path} does not say which dataset it was trained on; pass --dataset")

    def batches(name=name):
      return data.eval_batches(name, batch_size=batch_size, data_dir=data_dir)

    try:
      total = -(-data.dataset_info(name, data_dir).num_test // batch_size)
      metrics = evaluate(apply_fn, variables, batches(), mesh, total)
    except (FileNotFoundError, ValueError) as e:
      raise run.RunError(f"evaluating {path} on {name}: {e}") from None
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
