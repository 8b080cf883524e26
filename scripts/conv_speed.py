"""Micro-benchmark of every conv implementation on the layer shapes rmjax's CIFAR models use.

Prints a Markdown table: per layer shape and implementation, the jitted forward and forward +
backward (gradients w.r.t. input and kernel) in ms, the median of `--repeats` runs taken round-robin
over the implementations (so that a noisy machine slows all of them alike), and PyTorch's
`F.conv2d` (eager, NCHW, same thread count) when torch is installed. `auto` marks what
`rmjax.models.conv.choose` picks on this backend; the table behind it is docs/conv_speed.md.

  python scripts/conv_speed.py                      # all shapes, batch 128: ~15 min on 2 cores
  python scripts/conv_speed.py --only=depthwise --repeats=3
  python scripts/conv_speed.py --no_torch --batch=32
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import time

import jax

from rmjax.bench.measure import cpu_model
from rmjax.models import conv


@dataclasses.dataclass(frozen=True)
class Layer:
  """One conv layer: `size` x `size` input of `cin` channels, where it occurs in `model`."""

  kind: str  # dense / pointwise / depthwise / grouped: what the dispatch table keys on
  model: str
  size: int
  cin: int
  cout: int
  kernel: int
  stride: int = 1
  groups: int = 1
  pads: tuple[tuple[int, int], tuple[int, int]] | None = None  # None: kernel // 2 everywhere

  @property
  def padding(self):
    p = self.kernel // 2
    return self.pads or ((p, p), (p, p))

  def describe(self) -> str:
    s = f"{self.size}x{self.size}x{self.cin}->{self.cout} {self.kernel}x{self.kernel}"
    s += f" s{self.stride}" + (f" g{self.groups}" if self.groups > 1 else "")
    return s + (f" pad {self.pads}" if self.pads else "")


LAYERS = (
  Layer("dense", "ResNet-18 stem", 32, 3, 64, 3),
  Layer("dense", "ResNet-18 layer1", 32, 64, 64, 3),
  Layer("dense", "ResNet-18 layer2_0", 32, 64, 128, 3, 2),
  Layer("dense", "ResNet-18 layer2", 16, 128, 128, 3),
  Layer("dense", "ResNet-18 layer3", 8, 256, 256, 3),
  Layer("dense", "ResNet-18 layer4", 4, 512, 512, 3),
  Layer("dense", "RepVGG-A0 stage1", 32, 48, 48, 3),
  Layer("dense", "ResNet-20 stem", 32, 3, 16, 3),
  Layer("dense", "ResNet-20 stage1", 32, 16, 16, 3),
  Layer("dense", "ResNet-20 stage2_0", 32, 16, 32, 3, 2),
  Layer("dense", "ResNet-20 stage2", 16, 32, 32, 3),
  Layer("dense", "ResNet-20 stage3", 8, 64, 64, 3),
  Layer("pointwise", "ResNet-18 proj", 32, 64, 128, 1, 2),
  Layer("pointwise", "RMNeXt conv1", 32, 64, 128, 1),
  Layer("pointwise", "MobileNetV2 expand", 16, 24, 144, 1),
  Layer("pointwise", "MobileNetV2 last", 2, 320, 1280, 1),
  Layer("pointwise", "RepVGG-B1g4 1x1", 16, 128, 128, 1, 1, 4),
  Layer("depthwise", "MobileNetV2 block1", 32, 32, 32, 3, 1, 32),
  Layer("depthwise", "MobileNetV2 block2", 32, 96, 96, 3, 2, 96),
  Layer("depthwise", "MobileNetV2 block3", 16, 144, 144, 3, 1, 144),
  Layer("depthwise", "MobileNetV2 block8", 4, 384, 384, 3, 1, 384),
  Layer("depthwise", "Keras MobileNetV2", 32, 96, 96, 3, 2, 96, ((0, 1), (0, 1))),
  Layer("depthwise", "multiplier 2", 16, 64, 128, 3, 1, 64),
  Layer("grouped", "RMNeXt-26 stage1", 32, 128, 128, 3, 1, 4),
  Layer("grouped", "RMNeXt-26 stage2_0", 32, 256, 256, 3, 2, 4),
  Layer("grouped", "RMNeXt-26 stage3", 8, 512, 512, 3, 1, 4),
  Layer("grouped", "RMNeXt-41x4_8 stage1", 32, 192, 192, 3, 1, 24),
  Layer("grouped", "RepVGG-B1g4 3x3", 16, 128, 128, 3, 1, 4),
  Layer("grouped", "64 groups of 2", 16, 128, 128, 3, 1, 64),
)


def _time(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def _jax_fns(layer: Layer, impl: str):
  def forward(x, k):
    return conv.conv2d(
      x, k, strides=layer.stride, padding=layer.padding, groups=layer.groups, impl=impl
    )

  def backward(x, k, dy):  # what training pays for the layer: y, dx and dk
    y, vjp = jax.vjp(forward, x, k)
    return y, *vjp(dy)

  return jax.jit(forward), jax.jit(backward)


def _torch_fns(layer: Layer, x, k, dy):
  import numpy as np
  import torch

  def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))

  tx, tdy = nchw(x).requires_grad_(True), nchw(dy)
  tk = torch.from_numpy(np.ascontiguousarray(np.asarray(k).transpose(3, 2, 0, 1)))
  tk.requires_grad_(True)
  (top, bottom), (left, right) = layer.padding

  def forward():
    with torch.no_grad():
      return _torch_conv(tx, tk, layer, top, bottom, left, right)

  def backward():
    y = _torch_conv(tx, tk, layer, top, bottom, left, right)
    return torch.autograd.grad(y, (tx, tk), tdy)

  return forward, backward


def _torch_conv(x, k, layer, top, bottom, left, right):
  import torch.nn.functional as F

  if top == bottom and left == right:
    return F.conv2d(x, k, None, layer.stride, (top, left), groups=layer.groups)
  x = F.pad(x, (left, right, top, bottom))
  return F.conv2d(x, k, None, layer.stride, 0, groups=layer.groups)


def measure(layer: Layer, batch: int, repeats: int, with_torch: bool) -> dict[str, tuple]:
  """`{impl: (forward ms, forward+backward ms)}` for every implementation that applies."""
  x = jax.random.normal(jax.random.key(0), (batch, layer.size, layer.size, layer.cin))
  k_shape = (layer.kernel, layer.kernel, layer.cin // layer.groups, layer.cout)
  k = 0.1 * jax.random.normal(jax.random.key(1), k_shape)
  y = conv.conv2d(x, k, strides=layer.stride, padding=layer.padding, groups=layer.groups)
  dy = jax.random.normal(jax.random.key(3), y.shape)
  runs = {}
  for impl in conv.IMPLS:
    if conv.applies(impl, k.shape, layer.groups, layer.cin):
      forward, backward = _jax_fns(layer, impl)
      runs[impl] = (lambda f=forward: _time(f, x, k), lambda b=backward: _time(b, x, k, dy))
  result = _round_robin(runs, repeats)
  if with_torch:
    # Timed on its own, after JAX: XLA's worker threads spin a while after each call and would
    # slow an interleaved torch call down.
    forward, backward = _torch_fns(layer, x, k, dy)
    result |= _round_robin({"torch": (lambda: _time(forward), lambda: _time(backward))}, repeats)
  return result


def _round_robin(runs, repeats: int, slow: float = 5.0) -> dict[str, tuple[float, float]]:
  """`{name: (forward ms, forward+backward ms)}`: medians of `repeats` rounds over `runs`.
  A call slower than `slow` seconds is not repeated (XLA's grouped convs take up to minutes)."""
  times = {name: ([], []) for name in runs}
  for f, b in runs.values():  # compile and warm up
    f(), b()
  for _ in range(repeats):
    for name, (f, b) in runs.items():
      for i, call in enumerate((f, b)):
        if not times[name][i] or times[name][i][-1] < slow:
          times[name][i].append(call())
  return {name: tuple(1e3 * statistics.median(t) for t in ts) for name, ts in times.items()}


def header(batch: int, repeats: int, with_torch: bool) -> list[str]:
  load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
  versions = f"jax {jax.__version__}"
  if with_torch:
    import torch

    versions += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
  cpu = cpu_model() or platform.processor() or "unknown CPU"
  return [
    f"{datetime.date.today()}, {cpu}, {os.cpu_count()} cores, backend "
    f"{jax.default_backend()}, {versions}; load average before the run {load}.",
    f"Batch {batch}, float32, ms per call, median of {repeats} (round-robin over the",
    "implementations; a call over 5 s is timed once); fwd+bwd computes the output and the",
    "gradients w.r.t. input and kernel.",
    '**bold**: fastest rmjax implementation; *auto*: what `impl="auto"` picks here.',
    "",
  ]


def table(results, with_torch: bool) -> list[str]:
  lines = [
    "| layer | shape | impl | fwd ms | fwd+bwd ms | vs lax (fwd+bwd) |"
    + (" torch/rmjax auto (fwd / fwd+bwd) |" if with_torch else ""),
    "|---|---|---|---|---|---|" + ("---|" if with_torch else ""),
  ]
  for layer, times, auto in results:
    ours = {k: v for k, v in times.items() if k != "torch"}
    best_f = min(v[0] for v in ours.values())
    best_b = min(v[1] for v in ours.values())
    lax_b = ours["lax"][1]
    for name, (f, b) in ours.items():
      fs = f"**{f:.1f}**" if f == best_f else f"{f:.1f}"
      bs = f"**{b:.1f}**" if b == best_b else f"{b:.1f}"
      label = f"*{name}* (auto)" if name == auto else name
      row = f"| {layer.model} | {layer.describe()} | {label} | {fs} | {bs} | {lax_b / b:.2f}x |"
      if with_torch:
        if name == auto:
          tf, tb = times["torch"]
          row += f" {tf / f:.2f} / {tb / b:.2f} |"
        else:
          row += " |"
      lines.append(row)
    if with_torch:
      tf, tb = times["torch"]
      lines.append(f"| {layer.model} | {layer.describe()} | torch | {tf:.1f} | {tb:.1f} | | |")
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--only", default="", help="comma-separated kinds or model-name substrings")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch column")
  args = parser.parse_args()
  with_torch = not args.no_torch
  if with_torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      with_torch = False
  wanted = [w for w in args.only.split(",") if w]
  layers = [
    layer
    for layer in LAYERS
    if not wanted or any(w == layer.kind or w.lower() in layer.model.lower() for w in wanted)
  ]
  lines = header(args.batch, args.repeats, with_torch)
  print("\n".join(lines), flush=True)
  results = []
  for layer in layers:
    times = measure(layer, args.batch, args.repeats, with_torch)
    x_shape = (args.batch, layer.size, layer.size, layer.cin)
    k_shape = (layer.kernel, layer.kernel, layer.cin // layer.groups, layer.cout)
    auto = conv.resolve("auto", x_shape, k_shape, (layer.stride,) * 2, layer.padding, layer.groups)
    results.append((layer, times, auto))
    print("\n".join(table([results[-1]], with_torch)[2:]), flush=True)
  print("\n" + "\n".join(table(results, with_torch)))


if __name__ == "__main__":
  main()
