"""A detector-style network on an rmjax backbone, trained, its backbone converted by RM, its
outputs unchanged: the worked example of docs/backbones.md, whose numbers this regenerates.

The task is synthetic and detection-like: two Fashion-MNIST items (the embedded subset) pasted
at random places on a 64x64 canvas; the network labels every 4x4 cell with the class of the
item on it, or background (11 classes, a stride-4 map: the finest FPN level). The network is a
narrow ResNet-18 backbone (ImageNet stem: features at strides 4, 8, 16, 32), a feature pyramid
(Lin et al. 2017) and a 1x1 conv classifier on its finest level.

  python scripts/fpn_example.py                  # about 2 minutes on 2 CPU cores
  python scripts/fpn_example.py --write_docs     # also rewrites the numbers in docs/backbones.md
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rmjax import atomic, models, transforms  # noqa: E402
from rmjax.bench.measure import cpu_model  # noqa: E402
from rmjax.cost import count_macs, count_params  # noqa: E402
from rmjax.datasets.fashion_mnist_small import load_arrays  # noqa: E402

CANVAS, CELL, NUM_CLASSES = 64, 4, 11  # class 0: background; item class c is c + 1
WIDTHS = dict(widths=(16, 32, 64, 128), stem_width=16)


class FPN(nn.Module):
  """Feature pyramid: a 1x1 lateral conv per level, coarse levels upsampled (nearest) and added
  top-down, a 3x3 conv on each sum. Takes and returns finest-first lists of NHWC maps."""

  width: int = 32

  @nn.compact
  def __call__(self, features):
    laterals = [nn.Conv(self.width, (1, 1), name=f"lateral{i}")(c) for i, c in enumerate(features)]
    merged = [laterals[-1]]
    for lateral in reversed(laterals[:-1]):
      merged.insert(0, lateral + jax.image.resize(merged[0], lateral.shape, "nearest"))
    return [nn.Conv(self.width, (3, 3), name=f"smooth{i}")(p) for i, p in enumerate(merged)]


class Detector(nn.Module):
  """Backbone -> FPN -> per-cell class scores at stride 4. `backbone` is an rmjax model or
  the PlainNet `rm_convert(..., features=True)` makes of it: both take the same call."""

  backbone: nn.Module
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = self.backbone(x, train=train, features=True)
    pyramid = FPN(name="fpn")(features)
    return nn.Conv(self.num_classes, (1, 1), name="classifier")(pyramid[0])


def scenes(images, labels, n: int, seed: int):
  """`n` canvases with two items each, normalised, NHWC; and their per-cell class maps."""
  rng = np.random.default_rng(seed)
  canvas = np.zeros((n, CANVAS, CANVAS), np.float32)
  label_map = np.zeros((n, CANVAS, CANVAS), np.int32)
  for i in range(n):
    for k in rng.choice(len(images), 2, replace=False):
      top, left = rng.integers(0, CANVAS - 28 + 1, 2)
      item = images[k].astype(np.float32) / 255
      window = (i, slice(top, top + 28), slice(left, left + 28))
      canvas[window] = np.maximum(canvas[window], item)
      label_map[window] = np.where(item > 0.2, labels[k] + 1, label_map[window])
  centre = CELL // 2
  targets = label_map[:, centre::CELL, centre::CELL]
  return ((canvas - 0.2) / 0.35)[..., None], targets


def train(detector, variables, data, *, steps: int, batch: int, seed: int = 0):
  """Adam on per-cell softmax cross-entropy; BN statistics updated as it goes."""
  images, labels = data
  optimizer = optax.adam(2e-3)
  state = (variables["params"], variables["batch_stats"], optimizer.init(variables["params"]))

  @jax.jit
  def step(state, x, y):
    params, stats, opt = state

    def loss_fn(params):
      scores, updates = detector.apply(
        {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
      )
      return optax.softmax_cross_entropy_with_integer_labels(scores, y).mean(), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt = optimizer.update(grads, opt, params)
    return (optax.apply_updates(params, changes), updates["batch_stats"], opt), loss

  for i in range(steps):
    x, y = scenes(images, labels, batch, seed=seed * 100_000 + i)
    state, loss = step(state, x, y)
    if i % 100 == 0 or i == steps - 1:
      print(f"step {i:4d}  loss {float(loss):.3f}", flush=True)
  return {"params": state[0], "batch_stats": state[1]}


def cell_accuracy(scores, targets) -> tuple[float, float]:
  """Accuracy over all cells and over the cells items cover."""
  predicted = np.asarray(scores).argmax(-1)
  covered = targets > 0
  return float(np.mean(predicted == targets)), float(
    np.mean(predicted[covered] == targets[covered])
  )


def convert_backbone(detector: Detector, variables):
  """RM on the backbone's sub-tree of the detector's variables; the FPN and classifier keep
  theirs. Returns the detector with the plain backbone and its variables."""
  plain, plain_vars = transforms.rm_convert_subtree(
    detector.backbone, variables, "backbone", features=True
  )
  return Detector(plain), plain_vars


def backbone_outputs(backbone, variables, x):
  """The feature maps of the backbone inside a detector's `variables`; and its params, MACs."""
  own = transforms.subtree(variables, "backbone")
  apply = functools.partial(backbone.apply, train=False, features=True)
  with jax.default_matmul_precision("highest"):
    maps = jax.jit(apply)(own, x)
  one = jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32)
  return maps, count_params(own["params"]), count_macs(apply, own, one)


def measure(detector, variables, plain_detector, plain_vars, x, targets) -> dict:
  """Both detectors on the test scenes: max |score difference|, each feature map's max
  |difference|, accuracies, and the backbone's size before and after RM."""
  with jax.default_matmul_precision("highest"):
    scores = jax.jit(detector.apply)(variables, x)
    plain_scores = jax.jit(plain_detector.apply)(plain_vars, x)
  maps, *before = backbone_outputs(detector.backbone, variables, x)
  plain_maps, *after = backbone_outputs(plain_detector.backbone, plain_vars, x)
  return {
    "max_abs_diff": float(jnp.max(jnp.abs(scores - plain_scores))),
    "score_scale": float(jnp.max(jnp.abs(scores))),
    "maps": [
      (tuple(a.shape[1:]), float(jnp.max(jnp.abs(a - b))), float(jnp.max(jnp.abs(a))))
      for a, b in zip(maps, plain_maps, strict=True)
    ],
    "accuracy": cell_accuracy(scores, targets),
    "plain_accuracy": cell_accuracy(plain_scores, targets),
    "sizes": (tuple(before), tuple(after)),
  }


def report(m: dict, *, steps: int, batch: int, seconds: float) -> str:
  """The Markdown section docs/backbones.md shows."""
  (p0, f0), (p1, f1) = m["sizes"]
  (a0, c0), (a1, c1) = m["accuracy"], m["plain_accuracy"]
  lines = [
    "| detector | backbone params | backbone MACs / image | cell accuracy | on items |",
    "|---|---|---|---|---|",
    f"| residual ResNet-18 backbone | {p0:,} | {f0:,} | {a0:.2%} | {c0:.2%} |",
    f"| plain backbone (RM) | {p1:,} | {f1:,} | {a1:.2%} | {c1:.2%} |",
    "",
    f"Max |difference| of the detector's scores: {m['max_abs_diff']:.3g} (max |score| "
    f"{m['score_scale']:.3g}). Per feature map (shape: max |difference| / max |value|): "
    + "; ".join(f"{'x'.join(map(str, s))}: {d:.3g} / {v:.3g}" for s, d, v in m["maps"])
    + ".",
    "",
    f"{steps} Adam steps of {batch} scenes; 1,000 test scenes (from the 2,000 test images). "
    f"Whole run {seconds:.0f} s on {cpu_model() or 'a CPU'}, "
    f"{len(os.sched_getaffinity(0))} cores, {datetime.date.today().isoformat()}; regenerated "
    "by `python scripts/fpn_example.py --write_docs`.",
  ]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--write_docs", action="store_true", help="rewrite docs/backbones.md")
  args = parser.parse_args()
  start = time.perf_counter()
  data = load_arrays()
  backbone = models.create("resnet18", stem="imagenet", **WIDTHS)
  detector = Detector(backbone)
  x, targets = scenes(data["test_images"], data["test_labels"], 1000, seed=1)
  variables = detector.init(jax.random.key(0), x[:1])
  variables = train(
    detector,
    variables,
    (data["train_images"], data["train_labels"]),
    steps=args.steps,
    batch=args.batch,
  )
  plain_detector, plain_vars = convert_backbone(detector, variables)
  m = measure(detector, variables, plain_detector, plain_vars, x, targets)
  text = report(m, steps=args.steps, batch=args.batch, seconds=time.perf_counter() - start)
  print(text)
  if args.write_docs:
    atomic.write_section(os.path.join(ROOT, "docs", "backbones.md"), "fpn_example", text)


if __name__ == "__main__":
  main()
