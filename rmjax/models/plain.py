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
import functools
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# The Flax layer (an `nn.Conv` drop-in with fast CPU formulations) that runs a plain `Conv`.
from rmjax.models.conv import Conv as ConvLayer
from rmjax.models.features import check_taps, run_chain
from rmjax.models.squeeze_excite import SqueezeExcitation
from rmjax.models.structured import StructuredConv, runs_structured

# `Conv.padding` of TensorFlow's "SAME": computed from the input's size when applied.
SAME = "same"


def same_pads(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
  """TensorFlow's "SAME" padding `(low, high)` of a spatial axis of `size` pixels:
  `max((ceil(size / stride) - 1) * stride + kernel_size - size, 0)` in all, the odd one at the
  end. lax's "SAME" (what `rmjax.models.conv.conv2d(padding="SAME")` applies) is this rule."""
  ((low, high),) = lax.padtype_to_pads((size,), (kernel_size,), (stride,), "SAME")
  return int(low), int(high)


def _pair(v: int) -> str:
  return f"({v}, {v})"


@dataclasses.dataclass(frozen=True)
class Conv:
  """A 2-D convolution with zero padding; kernel HWIO `(k, k, in // groups, out)`.

  `padding`: `p` pads every side by p (PyTorch); `(low, high)` pads top and left by `low`,
  bottom and right by `high`. A symmetric pair is stored as its int. `"same"` (`SAME`) is
  TensorFlow's "SAME", which Keras-trained networks need: per spatial axis of n pixels,
  `max((ceil(n / stride) - 1) * stride + k - n, 0)` in all, the odd one at the end — (0, 1) for
  a stride-2 3x3 conv on even n, (1, 1) on odd n — so the same layer serves every input size,
  and `pads_at(n)` says what it pads.

  The RM converters also record where the kernel is Dirac structure rather than learned
  weights, so that `PlainNet.apply(..., structured=True)` can skip its zeros
  (`rmjax.models.structured`); dense execution ignores these fields:

  - `reserved`: the last `reserved` output channels copy input channels through the centre tap
    alone (a Dirac kernel, Eq. 2, scaled per channel): the first `reserved` inputs (a reserving
    conv, Sec. 4.1) or, with `carried`, the last ones, which then feed no other output (a middle
    conv carrying reserved channels as Dirac groups, or block-diagonally).
  - `merged`: the last `merged` input channels reach the outputs through the centre tap only, a
    1x1 conv at this conv's stride (the shortcut merged by Eq. 4, Appendix A.1 (b)); with
    `merged_identity`, input `in - merged + j` reaches output `j` only (an identity shortcut).

  Training a plain network fills those zeros in: `unstructured()` forgets the record.
  """

  in_features: int
  out_features: int
  kernel_size: int
  stride: int = 1
  padding: int | tuple[int, int] | str = 0
  groups: int = 1
  use_bias: bool = True
  reserved: int = 0
  carried: bool = False
  merged: int = 0
  merged_identity: bool = False

  def __post_init__(self):
    # plain.json gives lists; normalising keeps equal layers equal (and old files valid).
    p = self.padding
    if isinstance(p, str):
      if p.lower() != SAME:
        raise ValueError(f"padding {p!r}: expected an int, a (low, high) pair or {SAME!r}")
      object.__setattr__(self, "padding", SAME)
      return
    low, high = (p, p) if isinstance(p, numbers.Integral) else p
    low, high = int(low), int(high)
    object.__setattr__(self, "padding", low if low == high else (low, high))

  @property
  def pads(self) -> tuple[int, int]:
    """`(low, high)` padding of each spatial axis; for `"same"`, see `pads_at`."""
    p = self.padding
    if p == SAME:
      raise ValueError(f"{self}: its padding depends on the input size; use pads_at(size)")
    return (p, p) if isinstance(p, int) else p

  def pads_at(self, size: int) -> tuple[int, int]:
    """`(low, high)` padding of a spatial axis of `size` pixels (fixed unless `"same"`)."""
    if self.padding != SAME:
      return self.pads
    return same_pads(size, self.kernel_size, self.stride)

  @property
  def structured(self) -> bool:
    """Whether the converters recorded Dirac structure in this conv's kernel."""
    return bool(self.reserved or self.merged)

  def unstructured(self) -> Conv:
    """This conv without a record of Dirac structure (for a kernel that no longer has it)."""
    return dataclasses.replace(self, reserved=0, carried=False, merged=0, merged_identity=False)

  def __call__(self, x, *, train: bool, name: str):
    del train
    return ConvLayer(
      self.out_features,
      (self.kernel_size, self.kernel_size),
      strides=(self.stride, self.stride),
      padding=(self.pads_at(x.shape[-3]), self.pads_at(x.shape[-2])),
      feature_group_count=self.groups,
      use_bias=self.use_bias,
      name=name,
    )(x)

  def __str__(self):
    s = f"Conv({self.in_features}, {self.out_features}, kernel_size={_pair(self.kernel_size)}"
    s += f", stride={_pair(self.stride)}"
    if self.padding == SAME:
      s += f", padding={SAME}"
    elif isinstance(self.padding, tuple):
      s += f", padding=({self.pads}, {self.pads})"
    elif self.padding:
      s += f", padding={_pair(self.padding)}"
    if self.groups != 1:
      s += f", groups={self.groups}"
    if not self.use_bias:
      s += ", bias=False"
    return s + ")"


@dataclasses.dataclass(frozen=True)
class BatchNorm:
  """Per-channel affine normalisation; running statistics in `batch_stats`.

  `reserved`: how many trailing channels carry reserved input (RM's fine-tuning form): their BN
  was made an identity by Eq. 3, and fine-tuning re-estimates their statistics from data
  (Appendix A.2, `rmjax.finetune`).
  """

  features: int
  epsilon: float = 1e-5
  momentum: float = 0.9
  reserved: int = 0

  def __call__(self, x, *, train: bool, name: str):
    return nn.BatchNorm(
      use_running_average=not train, epsilon=self.epsilon, momentum=self.momentum, name=name
    )(x)

  def __str__(self):
    reserved = f", reserved={self.reserved}" if self.reserved else ""
    return f"BatchNorm({self.features}, eps={self.epsilon:g}{reserved})"


@dataclasses.dataclass(frozen=True)
class ReLU:
  """`max(x, 0)`, or with `max_value` also clipped from above (`max_value=6`: ReLU6)."""

  max_value: float | None = None

  def __call__(self, x, *, train: bool, name: str):
    del train, name
    x = nn.relu(x)
    return x if self.max_value is None else jnp.minimum(x, self.max_value)

  def __str__(self):
    if self.max_value is None:
      return "ReLU()"
    if self.max_value == 6:
      return "ReLU6()"
    return f"ReLU(max_value={self.max_value:g})"


class _PReLU(nn.Module):
  features: int
  max_value: float | None
  clipped: int

  @nn.compact
  def __call__(self, x):
    # PyTorch's PReLU initialises slopes to 0.25; converted networks set them explicitly.
    slope = self.param("slope", nn.initializers.constant(0.25), (self.features,))
    y = jnp.where(x >= 0, x, slope * x)
    if self.max_value is None or self.clipped == 0:
      return y
    # A channel mask, not slices: slicing a batch-polymorphic array (jax.export, jax2tf) lowers
    # to a gather that TFLite cannot convert.
    clip = jnp.arange(self.features) < self.clipped
    return jnp.where(clip, jnp.minimum(y, self.max_value), y)


@dataclasses.dataclass(frozen=True)
class PReLU:
  """Per-channel `x if x >= 0 else slope * x` (params: `slope`), the paper's activation for
  reserved channels whose values can be negative (Sec. 4.1: slope 1 is the identity).

  With `max_value`, the first `clipped` channels are also clipped from above: ReLU6 channels
  (slope 0) side by side with unclipped pass-through ones, as a converted ReLU6 MobileNetV2 needs.
  """

  features: int
  max_value: float | None = None
  clipped: int = 0

  def __call__(self, x, *, train: bool, name: str):
    del train
    return _PReLU(self.features, self.max_value, self.clipped, name=name)(x)

  def __str__(self):
    if self.max_value is None or self.clipped == 0:
      return f"PReLU(num_parameters={self.features})"
    return (
      f"PReLU(num_parameters={self.features}, max_value={self.max_value:g}, clipped={self.clipped})"
    )


@dataclasses.dataclass(frozen=True)
class SqueezeExcite:
  """Squeeze-and-excitation (Hu et al. 2018) on the first `channels` of `features` channels
  (params: `fc1` reducing to `reduced` units, `fc2`; Dense kernel and bias): those are gated by
  `sigmoid(fc2(relu(fc1(their spatial mean))))`; the other channels, reserved ones in an
  RM-converted SE block, pass through untouched (`rmjax.models.squeeze_excite`).
  """

  features: int
  reduced: int
  channels: int

  def __call__(self, x, *, train: bool, name: str):
    del train
    return SqueezeExcitation(self.reduced, self.channels, name=name)(x)

  def __str__(self):
    return f"SqueezeExcite({self.features}, reduced={self.reduced}, channels={self.channels})"


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


Layer = Conv | BatchNorm | ReLU | PReLU | SqueezeExcite | MaxPool | GlobalAvgPool | Dense


class PlainNet(nn.Module):
  """A single-path network: `layers[i+1]` consumes exactly what `layers[i]` produced.

  `taps`: indices of the layers whose outputs are the network's feature maps, what
  `features=True` returns (backbone mode, `rmjax.models.features`); `rm_convert(...,
  features=True)` puts them where the model's feature maps are.
  """

  layers: tuple[Layer, ...]
  taps: tuple[int, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "taps", check_taps(self.taps, len(self.layers), "PlainNet"))
    super().__post_init__()

  @nn.compact
  def __call__(
    self, x, train: bool = False, *, structured: bool | None = None, features: bool = False
  ):
    """`structured=True` runs the convs with recorded Dirac structure as conv + copies + adds
    (`rmjax.models.structured`): the same function without multiplying the zeros; `False`
    runs every conv dense. `None` (the default) picks per conv what is faster on the platform
    (`structured.runs_structured`); dense when training. `features=True` returns the tuple of
    the outputs of the layers at `taps` instead (the layers after the last tap do not run)."""
    if features and not self.taps:
      raise ValueError("features=True needs a PlainNet with taps (rm_convert(..., features=True))")
    platform = jax.default_backend()

    def step(i, layer):
      auto = structured is None and not train and runs_structured(layer, platform)
      if auto or (structured and isinstance(layer, Conv) and layer.structured):
        return lambda x: StructuredConv(layer, name=f"layers_{i}")(x)
      return functools.partial(layer, train=train, name=f"layers_{i}")

    steps = [step(i, layer) for i, layer in enumerate(self.layers)]
    return run_chain(steps, x, self.taps if features else ())

  def summary(self) -> str:
    """The layer sequence, one numbered line per layer (the paper's Table 4 format); a tap's
    line ends with `-> features[k]`."""
    feature = {i: k for k, i in enumerate(self.taps)}
    lines = [
      f"  ({i}): {layer}" + (f"  -> features[{feature[i]}]" if i in feature else "")
      for i, layer in enumerate(self.layers)
    ]
    return "PlainNet(\n" + "\n".join(lines) + "\n)"

  def __str__(self):
    return self.summary()


# A PlainNet carries no arrays, so it may be returned from `jax.jit` as static data; this is what
# lets `jax.jit(rm_convert, static_argnums=0)` hand back `(plain_model, plain_variables)`.
jax.tree_util.register_static(PlainNet)
