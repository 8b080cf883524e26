"""The conversion target: a plain (single-path) network as a flat sequence of layers.

`PlainNet.layers` is plain data — frozen dataclasses with kernel size, stride, padding and groups
— so research code can inspect the architecture, count it, or serialise it, and `print(plain)`
reads like the paper's Table 4. Every layer's input is the previous layer's output: there is no
other wiring to express.

Variables follow Flax conventions; the layer at index i owns the collection entry `layers_{i}`
(only layers with weights have one):

  >>> plain = PlainNet((Conv(3, 8, 3, padding=1), ReLU(), GlobalAvgPool(), Dense(8, 10)))
  >>> variables = plain.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  >>> sorted(variables["params"])
  ['layers_0', 'layers_3']
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


def _pair(v: int) -> str:
  return f"({v}, {v})"


@dataclasses.dataclass(frozen=True)
class Conv:
  """A 2-D convolution with symmetric zero padding; kernel HWIO `(k, k, in // groups, out)`."""

  in_features: int
  out_features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  groups: int = 1
  use_bias: bool = True

  def __call__(self, x, *, train: bool, name: str):
    del train
    p = self.padding
    return nn.Conv(
      self.out_features,
      (self.kernel_size, self.kernel_size),
      strides=(self.stride, self.stride),
      padding=((p, p), (p, p)),
      feature_group_count=self.groups,
      use_bias=self.use_bias,
      name=name,
    )(x)

  def __str__(self):
    s = f"Conv({self.in_features}, {self.out_features}, kernel_size={_pair(self.kernel_size)}"
    s += f", stride={_pair(self.stride)}"
    if self.padding:
      s += f", padding={_pair(self.padding)}"
    if self.groups != 1:
      s += f", groups={self.groups}"
    if not self.use_bias:
      s += ", bias=False"
    return s + ")"


@dataclasses.dataclass(frozen=True)
class BatchNorm:
  """Per-channel affine normalisation; running statistics in `batch_stats`."""

  features: int
  epsilon: float = 1e-5
  momentum: float = 0.9

  def __call__(self, x, *, train: bool, name: str):
    return nn.BatchNorm(
      use_running_average=not train, epsilon=self.epsilon, momentum=self.momentum, name=name
    )(x)

  def __str__(self):
    return f"BatchNorm({self.features}, eps={self.epsilon:g})"


@dataclasses.dataclass(frozen=True)
class ReLU:
  def __call__(self, x, *, train: bool, name: str):
    del train, name
    return nn.relu(x)

  def __str__(self):
    return "ReLU()"


@dataclasses.dataclass(frozen=True)
class MaxPool:
  """Max pooling with -inf padding, as PyTorch's MaxPool2d."""

  window: int = 3
  stride: int = 2
  padding: int = 1

  def __call__(self, x, *, train: bool, name: str):
    del train, name
    p = self.padding
    return nn.max_pool(
      x, (self.window, self.window), strides=(self.stride, self.stride), padding=((p, p), (p, p))
    )

  def __str__(self):
    return (
      f"MaxPool(kernel_size={_pair(self.window)}, stride={_pair(self.stride)}, "
      f"padding={_pair(self.padding)})"
    )


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
  """Mean over the spatial axes: NHWC -> NC."""

  def __call__(self, x, *, train: bool, name: str):
    del train, name
    return jnp.mean(x, axis=(1, 2))

  def __str__(self):
    return "GlobalAvgPool()"


@dataclasses.dataclass(frozen=True)
class Dense:
  in_features: int
  out_features: int

  def __call__(self, x, *, train: bool, name: str):
    del train
    return nn.Dense(self.out_features, name=name)(x)

  def __str__(self):
    return f"Dense(in_features={self.in_features}, out_features={self.out_features})"


Layer = Conv | BatchNorm | ReLU | MaxPool | GlobalAvgPool | Dense


class PlainNet(nn.Module):
  """A single-path network: `layers[i+1]` consumes exactly what `layers[i]` produced."""

  layers: tuple[Layer, ...]

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, layer in enumerate(self.layers):
      x = layer(x, train=train, name=f"layers_{i}")
    return x

  def summary(self) -> str:
    """The layer sequence, one numbered line per layer (the paper's Table 4 format)."""
    lines = [f"  ({i}): {layer}" for i, layer in enumerate(self.layers)]
    return "PlainNet(\n" + "\n".join(lines) + "\n)"

  def __str__(self):
    return self.summary()


# A PlainNet carries no arrays, so it may be returned from `jax.jit` as static data; this is what
# lets `jax.jit(rm_convert, static_argnums=0)` hand back `(plain_model, plain_variables)`.
jax.tree_util.register_static(PlainNet)
