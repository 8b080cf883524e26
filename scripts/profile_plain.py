"""Where a plain network's time goes on this device: XLA's fusion of conv + bias + ReLU, compile
times, and conv by conv, dense vs structured (the numbers behind docs/benchmarks.md's notes).

  python scripts/profile_plain.py                       # RMNet-18 (CIFAR), batch 32
  python scripts/profile_plain.py --model=rmnext26x3_32 --batch=16
"""

import collections
import functools
import re
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from rmjax import models, transforms
from rmjax.cost import count_macs
from rmjax.models.plain import Conv, PlainNet, ReLU
from rmjax.randomize import random_variables

_MODEL = flags.DEFINE_string("model", "resnet18", "A models.create name (CIFAR stem, 32x32).")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (median).")


def timed(fn, *args, repeats: int):
  """(compile seconds, median seconds per call) of jitted `fn(*args)`."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times), compiled


def fusion_summary(compiled) -> str:
  """How XLA grouped the convolutions and their bias adds and ReLUs (the optimized HLO)."""
  text = compiled.as_text()
  bodies = re.split(r"\n(?=%?\S+ \(|ENTRY)", text)
  convs_with_epilogue = convs_alone = 0
  for body in bodies:
    n = body.count(" convolution(")
    if not n:
      continue
    if " maximum(" in body and " add(" in body:
      convs_with_epilogue += n
    else:
      convs_alone += n
  kinds = collections.Counter(re.findall(r'"kind":"(\w+)"', text))
  kinds.update(re.findall(r"kind=(k\w+)", text))
  return (
    f"{convs_with_epilogue} convs share a fused computation with their bias add and ReLU, "
    f"{convs_alone} stand alone (bias + ReLU in a separate loop fusion); fusions by kind: "
    + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
  )


def main(argv):
  del argv
  batch, repeats = _BATCH.value, _REPEATS.value
  model = models.create(_MODEL.value, num_classes=10, stem="cifar")
  x = jax.random.uniform(jax.random.key(0), (batch, 32, 32, 3))
  variables = random_variables(model, x[:1])
  plain, plain_vars = transforms.rm_convert_jit(model, variables)
  applies = {
    "residual": (functools.partial(model.apply, train=False), variables),
    "plain, dense": (functools.partial(plain.apply, structured=False), plain_vars),
    "plain, structured": (functools.partial(plain.apply, structured=True), plain_vars),
  }
  print(f"## {_MODEL.value}, batch {batch}, {jax.devices()[0].device_kind}\n")
  print("| network | compile | ms / batch | imgs/s | GMACs / img |")
  print("|---|---|---|---|---|")
  whole = {}
  for name, (fn, v) in applies.items():
    compile_s, seconds, compiled = timed(fn, v, x, repeats=repeats)
    whole[name] = (seconds, compiled)
    macs = count_macs(fn, v, x) / batch / 1e9
    print(
      f"| {name} | {compile_s:.2f} s | {1e3 * seconds:.0f} | {batch / seconds:.0f} | {macs:.3f} |"
    )
  print(f"\nplain, dense: {fusion_summary(whole['plain, dense'][1])}")
  print(f"plain, structured: {fusion_summary(whole['plain, structured'][1])}\n")

  # Conv by conv (each with its bias and the ReLU after it), on the input it sees in the net.
  print("| layer | conv | dense ms | structured ms | saved |")
  print("|---|---|---|---|---|")
  totals = collections.Counter()
  h = jax.ShapeDtypeStruct(x.shape, x.dtype)
  for i, layer in enumerate(plain.layers):
    if isinstance(layer, Conv):
      relu = isinstance(plain.layers[i + 1], ReLU) if i + 1 < len(plain.layers) else False
      one = PlainNet((layer, ReLU()) if relu else (layer,))
      v = {"params": {"layers_0": plain_vars["params"][f"layers_{i}"]}}
      xi = jnp.ones(h.shape, h.dtype)
      _, dense, _ = timed(functools.partial(one.apply, structured=False), v, xi, repeats=repeats)
      _, structured, _ = timed(
        functools.partial(one.apply, structured=True), v, xi, repeats=repeats
      )
      totals.update(dense=dense, structured=structured)
      if layer.structured:
        print(
          f"| {i} | {layer} | {1e3 * dense:.1f} | {1e3 * structured:.1f} "
          f"| {100 * (1 - structured / dense):.0f}% |"
        )
    h = jax.eval_shape(
      lambda a, layer=layer, i=i: PlainNet((layer,)).apply(
        {k: {"layers_0": c[f"layers_{i}"]} for k, c in plain_vars.items() if f"layers_{i}" in c}, a
      ),
      h,
    )
  dense_net = whole["plain, dense"][0]
  print(
    f"\nSum over convs (+ReLU), each alone: dense {1e3 * totals['dense']:.0f} ms, structured "
    f"{1e3 * totals['structured']:.0f} ms; the whole dense network {1e3 * dense_net:.0f} ms."
  )


if __name__ == "__main__":
  app.run(main)
