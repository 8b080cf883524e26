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
from rmjax.cost import count_macs, count_params
from rmjax.evaluation import accumulate, eval_apply_fn, eval_metrics_from, eval_sums
from rmjax.mesh import Mesh


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
def _compare_step(vars_a, vars_b, batch, apply_a, apply_b):
  """Eval sums of both networks and their max |logit difference| on one batch."""
  logits_a = apply_a(vars_a, batch["image"])
  logits_b = apply_b(vars_b, batch["image"])
  diff = jnp.max(jnp.abs(logits_a - logits_b) * batch["mask"][:, None])
  return eval_sums(logits_a, batch), eval_sums(logits_b, batch), diff


def compare_with_plain(model, variables, make_batches, mesh: Mesh, *, keep_bn: bool = False):
  """Converts `model` with `rm_convert` and measures both on the batches of `make_batches()`.

  One pass over the batches gives both networks' accuracy and the max |logit difference|
  (`rows[1]["max_abs_logit_diff"]`); speed is timed on the first batch. Returns rows
  `{"network", "top1", "top5", "params", "imgs_per_sec"}`.
  """
  plain, plain_vars = transforms.rm_convert_jit(model, variables, keep_bn=keep_bn)
  apply_model, apply_plain = eval_apply_fn(model), eval_apply_fn(plain)
  totals_model = totals_plain = images = None
  worst = 0.0
  for local in make_batches():
    images = jnp.asarray(local["image"]) if images is None else images
    # Full float32 for the comparison: on GPUs XLA's default runs float32 convs in TF32, whose
    # rounding (~1e-3 relative on H200) would swamp the difference RM introduces (~1e-6).
    with jax.default_matmul_precision("highest"):
      sums_model, sums_plain, diff = _compare_step(
        variables, plain_vars, mesh.global_batch(local), apply_model, apply_plain
      )
    totals_model = accumulate(totals_model, sums_model)
    totals_plain = accumulate(totals_plain, sums_plain)
    worst = max(worst, float(diff))
  rows = []
  for name, apply_fn, v, totals in (
    (type(model).__name__ + " (residual)", apply_model, variables, totals_model),
    ("PlainNet (RM)", apply_plain, plain_vars, totals_plain),
  ):
    metrics = eval_metrics_from(totals)
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


def conversion_sizes(model, size: int, *, in_channels: int = 3, **convert_kwargs):
  """`((params, MACs) of model, (params, MACs) of its rm_convert result)` on one
  `size x size` input. From shapes only: no weights are drawn and nothing is compiled.

    >>> (p0, f0), (p1, f1) = conversion_sizes(models.create("resnet50"), 224)
  """
  x = jax.ShapeDtypeStruct((1, size, size, in_channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  plain, plain_vars = jax.eval_shape(
    lambda v: transforms.rm_convert(model, v, **convert_kwargs), variables
  )
  dense = functools.partial(plain.apply, structured=False)
  return (
    (count_params(variables["params"]), count_macs(lambda v, x: model.apply(v, x), variables, x)),
    # The dense form's MACs: the network's size, whatever form runs by default.
    (count_params(plain_vars["params"]), count_macs(dense, plain_vars, x)),
  )
