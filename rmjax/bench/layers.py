"""Dense vs structured execution conv by conv (`bench.py --layer_timings`): the measurements
that `rmjax.models.structured.runs_structured`'s thresholds are set from.

For each plain network of the run (once, whatever its modes), every conv with recorded Dirac
structure — once per distinct conv and input shape — runs alone at the benchmark's batch, with
the ReLU after it where there is one (XLA fuses it with the conv), dense and structured; the
two take turns (`measure.time_batches`), each batch dispatched back to back and waited for at
the end (a lone conv is short, and timing calls one by one would measure dispatch). A row: the
conv, its `kind` and `saving` (the fraction of its multiply-adds structured execution skips),
how many of the network's layers it stands for, ms per batch in each form, their ratio, and
what the rule picks on this platform.

  >>> rows = conv_timings(suites.build(["tiny"]), batch=8, protocol=measure.QUICK)
"""

from __future__ import annotations

import collections
import functools
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from rmjax.bench.measure import Protocol, batches, input_dtype, log, time_batches
from rmjax.bench.suites import Network
from rmjax.models import structured
from rmjax.models.plain import Conv, PlainNet, ReLU


def _layer_variables(variables, i: int) -> dict:
  return {k: {"layers_0": c[f"layers_{i}"]} for k, c in variables.items() if f"layers_{i}" in c}


def layer_inputs(plain: PlainNet, variables, x) -> list[jax.ShapeDtypeStruct]:
  """The shape (and dtype) of each layer's input when `plain` runs on `x` (abstract)."""
  shapes, h = [], jax.ShapeDtypeStruct(x.shape, x.dtype)
  for i, layer in enumerate(plain.layers):
    shapes.append(h)
    apply = functools.partial(PlainNet((layer,)).apply, structured=False)
    h = jax.eval_shape(apply, _layer_variables(variables, i), h)
  return shapes


def _distinct_convs(plain: PlainNet, variables, x):
  """`[(index of the first, count, input shape)]` of the structured convs, one per distinct
  (conv, following ReLU or not, input shape)."""
  shapes = layer_inputs(plain, variables, x)
  found: dict[tuple, list[int]] = collections.OrderedDict()
  for i, layer in enumerate(plain.layers):
    if isinstance(layer, Conv) and layer.structured:
      relu = i + 1 < len(plain.layers) and isinstance(plain.layers[i + 1], ReLU)
      key = (layer, relu, shapes[i].shape, str(shapes[i].dtype))
      found.setdefault(key, []).append(i)
  return [(ids[0], len(ids), key[1], shapes[ids[0]]) for key, ids in found.items()]


def _time_conv(plain: PlainNet, variables, i: int, relu: bool, shape, protocol: Protocol):
  """Seconds per batch of layer `i` (+ ReLU) alone, dense and structured, timed in turn."""
  one = PlainNet((plain.layers[i], ReLU()) if relu else (plain.layers[i],))
  v = _layer_variables(variables, i)
  h = jnp.ones(shape.shape, shape.dtype)
  runs = []
  for mode in (False, True):
    compiled = jax.jit(functools.partial(one.apply, structured=mode)).lower(v, h).compile()
    runs.append(batches(compiled, (v, h)))
  dense, structured_s = time_batches(runs, protocol)
  return statistics.median(dense), statistics.median(structured_s)


def conv_timings(
  networks: Sequence[Network],
  *,
  batch: int,
  protocol: Protocol,
  progress: Callable[[str], None] = log,
  on_row: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
  """A row per distinct structured conv of each plain network in `networks` (see above)."""
  rows, seen, start = [], set(), time.perf_counter()
  platform = jax.default_backend()
  for net in networks:
    plain = net.model
    if not isinstance(plain, PlainNet) or id(plain) in seen:
      continue
    seen.add(id(plain))
    label = net.name.rsplit(" (", 1)[0]
    x = jax.ShapeDtypeStruct((batch, net.image_size, net.image_size, 3), input_dtype(net))
    for i, count, relu, shape in _distinct_convs(plain, net.variables, x):
      spec = plain.layers[i]
      dense, structured_s = _time_conv(plain, net.variables, i, relu, shape, protocol)
      rows.append(
        {
          "network": label,
          "layer": i,
          "conv": str(spec),
          "input_shape": list(shape.shape),
          "kind": structured.kind(spec),
          "saving": structured.saving(spec),
          "count": count,
          "dense_ms": 1e3 * dense,
          "structured_ms": 1e3 * structured_s,
          "ratio": structured_s / dense,
          "rule": structured.runs_structured(spec, platform),
        }
      )
      on_row(rows)
      r = rows[-1]
      progress(
        f"[layers {len(rows)} {time.perf_counter() - start:.0f}s] {label} layer {i} "
        f"({r['kind']}, saving {r['saving']:.2f}, x{count}): dense {r['dense_ms']:.2f} ms, "
        f"structured {r['structured_ms']:.2f} ms"
      )
  return rows
