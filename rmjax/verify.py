"""Is a converted, imported or exported network the same function as its source?

Equivalence is rmjax's product: every network it writes is first run beside its source on a
check batch and compared by one rule, `max |logit difference| <= tolerance x max(1, max |logit|)`
— relative to the logit scale above 1, absolute below — in float32 at full precision (no TF32
or bfloat16 passes on GPUs and TPUs).

  >>> c = difference(eval_logits(model, variables, x), eval_logits(plain, plain_vars, x))
  >>> within(c, tolerance=1e-4)
  True
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.models.plain import PlainNet

TOLERANCE = 1e-4  # the default bound, relative to max(1, max |logit|)


def eval_logits(model, variables, x, *, features: bool = False):
  """`model.apply(variables, x, train=False)`, jitted, with float32 'highest' matmuls; a
  `PlainNet` dense (`structured=False`), so that equivalence checks read every kernel entry
  (tests/structured_test.py checks the structured form against it). With `features`, the tuple
  of its feature maps (`rmjax.models.features`).

  One XLA program per model; op-by-op (eager) execution compiles every op separately, which
  is several times slower for small networks.
  """
  kwargs = {"features": True} if features else {}
  if isinstance(model, PlainNet):
    kwargs["structured"] = False
  with jax.default_matmul_precision("highest"):
    return jax.jit(functools.partial(model.apply, train=False, **kwargs))(variables, x)


def max_abs_difference(model, variables, plain, plain_variables, x) -> float:
  """Max |logits(model) - logits(plain)| on `x`, both in eval mode."""
  diff = eval_logits(model, variables, x) - eval_logits(plain, plain_variables, x)
  return float(jnp.max(jnp.abs(diff)))


def difference(want, got) -> dict[str, float]:
  """How far logits `got` are from `want`: max |difference|, the logit scale (max |want|),
  top-1 agreement and the number of examples.

  Tuples of feature maps (backbone mode) are held to the rule map by map, each on its own
  scale: the result is the worst map's (largest `max |diff| / max(1, scale)`), with `map` its
  index and `maps` their number, and no top-1 agreement.
  """
  if isinstance(want, tuple | list):
    if not isinstance(got, tuple | list) or len(got) != len(want):
      got = [None] * len(want)  # nothing to compare: every map differs (inf)
    maps = [_map_difference(w, g) for w, g in zip(want, got, strict=True)]
    k = max(range(len(maps)), key=lambda k: maps[k]["max_abs_diff"] / bound(maps[k], 1.0))
    return {**maps[k], "map": k, "maps": len(maps)}
  want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
  return {
    "max_abs_diff": float(np.max(np.abs(want - got))),
    "logit_scale": float(np.max(np.abs(want))),
    "top1_agreement": float(np.mean(want.argmax(-1) == got.argmax(-1))),
    "examples": int(want.shape[0]),
  }


def _map_difference(want, got) -> dict[str, float]:
  want = np.asarray(want, np.float64)
  got = None if got is None else np.asarray(got, np.float64)
  same_shape = got is not None and got.shape == want.shape
  return {
    # A map of another shape (or none) is as different as can be.
    "max_abs_diff": float(np.max(np.abs(want - got))) if same_shape else float("inf"),
    "logit_scale": float(np.max(np.abs(want))),
    "examples": int(want.shape[0]),
  }


def bound(c: dict[str, float], tolerance: float = TOLERANCE) -> float:
  """The largest max |difference| the rule allows for the logits of `c` (see `difference`)."""
  return tolerance * max(1.0, c["logit_scale"])


def within(c: dict[str, float], tolerance: float = TOLERANCE) -> bool:
  """Whether `c` (see `difference`) passes the rule; NaN never does."""
  return bool(c["max_abs_diff"] <= bound(c, tolerance))
