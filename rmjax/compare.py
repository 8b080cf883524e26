"""Original vs plain network, side by side: accuracy, logit difference, speed, size.

>>> rows = compare_with_plain(model, variables, make_batches, mesh)
>>> print(format_table(rows))
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp

from rmjax import transforms
from rmjax.testing import count_params
from rmjax.train import Mesh, eval_apply_fn, evaluate


def inference_speed(apply_fn, variables, images, *, repeats: int = 10) -> float:
  """Images per second of jitted `apply_fn` on `images` (median of `repeats`, after warm-up)."""
  fn = jax.jit(apply_fn)
  jax.block_until_ready(fn(variables, images))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(variables, images))
    times.append(time.perf_counter() - start)
  return images.shape[0] / statistics.median(times)


@functools.partial(jax.jit, static_argnames=("apply_a", "apply_b"))
def _max_difference(vars_a, vars_b, batch, apply_a, apply_b):
  diff = jnp.abs(apply_a(vars_a, batch["image"]) - apply_b(vars_b, batch["image"]))
  return jnp.max(diff * batch["mask"][:, None])


def compare_with_plain(model, variables, make_batches, mesh: Mesh, *, keep_bn: bool = False):
  """Converts `model` with `rm_convert` and measures both on the batches of `make_batches()`.

  Returns rows `{"network", "top1", "top5", "params", "imgs_per_sec"}` and the max |logit
  difference| over all evaluated examples (`rows[1]["max_abs_logit_diff"]`).
  """
  convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames="keep_bn")
  plain, plain_vars = convert(model, variables, keep_bn=keep_bn)
  apply_model, apply_plain = eval_apply_fn(model), eval_apply_fn(plain)
  first = next(iter(make_batches()))
  images = jnp.asarray(first["image"])
  worst = 0.0
  for local in make_batches():
    batch = mesh.global_batch(local)
    worst = max(
      worst, float(_max_difference(variables, plain_vars, batch, apply_model, apply_plain))
    )
  rows = []
  for name, apply_fn, v in (
    (type(model).__name__ + " (residual)", apply_model, variables),
    ("PlainNet (RM)", apply_plain, plain_vars),
  ):
    metrics = evaluate(apply_fn, v, make_batches(), mesh)
    rows.append(
      {
        "network": name,
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "params": count_params(v["params"]),
        "imgs_per_sec": inference_speed(apply_fn, v, images),
      }
    )
  rows[1]["max_abs_logit_diff"] = worst
  return rows


def format_table(rows) -> str:
  """A Markdown table of `compare_with_plain`'s rows."""
  lines = [
    "| network | top-1 | top-5 | params | imgs/s | max abs logit diff |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    diff = f"{r['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in r else "—"
    lines.append(
      f"| {r['network']} | {100 * r['top1']:.2f}% | {100 * r['top5']:.2f}% | {r['params']:,} "
      f"| {r['imgs_per_sec']:.0f} | {diff} |"
    )
  return "\n".join(lines)
