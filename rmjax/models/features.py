"""Backbone mode: a network's multi-scale feature maps instead of its logits.

Every rmjax network is a chain: a model is its `layout()` of blocks (`BlockNetwork`), a plain
network its `layers` (`PlainNet`). A *tap* is a point of that chain whose output is a feature
map — for a model, a block named by `model.feature_taps()`; for a plain network, a layer index
in `PlainNet.taps`. `apply(..., features=True)` runs the chain up to its last tap and returns the
tapped outputs as a tuple, finest first; what comes after the last tap (the head) does not run,
so a backbone needs no head variables.

  >>> model = models.create("resnet18", stem="imagenet")
  >>> c2, c3, c4, c5 = model.apply(variables, x, train=False, features=True)  # strides 4 .. 32
  >>> plain, plain_vars = transforms.rm_convert(model, variables, features=True)
  >>> plain.apply(plain_vars, x, features=True)     # the same four maps (plain.taps says where)

Where each family taps (`feature_taps`): the output of the last block of every stage — stride
4/8/16/32 on the ImageNet stem, 1/2/4/8 on the CIFAR one — for ResNet, SE-ResNet, RMNeXt,
RepVGG and pre-activation ResNets (there the stage's raw sum `x + F(x)`, as the next stage
receives it: not normalised, since the BN-ReLU that follows belongs to the next block); for the
MobileNets, the last block at each resolution (MobileNetV2: the linear bottleneck's output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def run_chain(steps: Sequence[Callable], x, taps: Sequence[int] = ()):
  """Applies `steps` in order. Without `taps`: the last output. With taps (increasing indices
  into `steps`): the tuple of the outputs of those steps; no step after the last tap runs."""
  if not taps:
    for step in steps:
      x = step(x)
    return x
  wanted, outputs = set(taps), []
  for i, step in enumerate(steps[: taps[-1] + 1]):
    x = step(x)
    if i in wanted:
      outputs.append(x)
  return tuple(outputs)


def check_taps(taps: Sequence[int], length: int, what: str) -> tuple[int, ...]:
  """`taps` as a tuple of ints, or ValueError unless strictly increasing indices in
  `range(length)`."""
  taps = tuple(int(t) for t in taps)
  if any(not 0 <= t < length for t in taps) or list(taps) != sorted(set(taps)):
    raise ValueError(f"taps {taps} must be strictly increasing indices of {what}'s {length} steps")
  return taps


def tap_indices(layout: Sequence, names: Sequence[str]) -> tuple[int, ...]:
  """The positions in `layout` (unbound blocks) of the blocks called `names`."""
  position = {block.name: i for i, block in enumerate(layout)}
  missing = [name for name in names if name not in position]
  if missing:
    raise ValueError(f"feature taps {missing} are not blocks of the layout")
  return check_taps([position[name] for name in names], len(layout), "the layout")


def feature_shapes(model, variables, input_shape) -> tuple[tuple[int, ...], ...]:
  """The shape of each feature map `model.apply(variables, x, features=True)` returns for one
  input of `input_shape` (no batch axis), e.g. to size a neck. Computes nothing (shapes only).

    >>> feature_shapes(model, variables, (224, 224, 3))   # ResNet-18
    ((1, 56, 56, 64), (1, 28, 28, 128), (1, 14, 14, 256), (1, 7, 7, 512))
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, features=True), variables, x)
  return tuple(tuple(o.shape) for o in out)
