"""MobileNetV1 (Howard et al. 2017), MobileNetV2 (Sandler et al. 2018), and the paper's
MobileNetV2 re-designed so that RM + fusion turns it into MobileNetV1 exactly (Sec. 4.4, 5.3).

Blocks (names are the variable paths the converters read):
  ConvBN              conv k x k + BN + activation: the stem, and MobileNetV2's last 1x1 conv;
  DepthwiseSeparable  MobileNetV1's depthwise 3x3 + BN + act, pointwise 1x1 + BN + act;
  InvertedResidual    MobileNetV2's [expand 1x1 + BN + act] -> depthwise 3x3 + BN + act ->
                      [squeeze-and-excitation] -> project 1x1 + BN (linear bottleneck) +
                      identity shortcut.

Why the re-design converts to MobileNetV1 (Fig. 6): after RM, a block's projecting 1x1 conv is
followed by the next block's expanding 1x1 conv with nothing between them, and the two fuse
into one (Eq. 5). So the plain network is `stem, (depthwise, pointwise) x 13, head` — V1's layer
sequence — and its widths are V1's when every depthwise conv is, after RM, as wide as V1's:
`hidden + reserved channels = V1 width`. `mobilenetv2_to_v1` derives those widths from V1's.

  >>> model = mobilenetv2_to_v1(num_classes=10, stem="cifar")
  >>> plain, plain_vars = rmjax.transforms.rm_convert(model, variables)   # == mobilenetv1

Imported weights (`rmjax.interop`) need two fields to compute what their framework computed:
`bn_epsilon` (PyTorch 1e-5, Keras 1e-3) and `padding` ("torch": k // 2 on every side; "keras":
TensorFlow's "SAME", which for a stride-2 3x3 conv depends on its input's size: (0, 1) on even
sizes, (1, 1) on odd ones — what Keras' stem (`padding="same"`) and its blocks'
`ZeroPadding2D(correct_pad(...))` compute in a MobileNetV2 built for one input size;
"keras_unsized": a Keras MobileNetV2 built without a fixed size (`input_shape=(None, None, 3)`),
whose blocks' `ZeroPadding2D` were fixed at (0, 1) for every size while its stem stays "SAME").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from rmjax.models.conv import Conv
from rmjax.models.layers import (
  BN_EPSILON,
  BN_MOMENTUM,
  BlockNetwork,
  Head,
  check_stem,
  conv_init,
)
from rmjax.models.plain import SAME
from rmjax.models.squeeze_excite import SqueezeExcitation

ACTIVATIONS = {"relu": nn.relu, "relu6": nn.relu6}
PADDINGS = ("torch", "keras", "keras_unsized")


def _check_activation(name: str) -> None:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; expected one of {tuple(ACTIVATIONS)}")


def _check_padding(name: str) -> None:
  if name not in PADDINGS:
    raise ValueError(f"unknown padding {name!r}; expected one of {PADDINGS}")


def conv_padding(kernel_size: int, stride: int, padding: str) -> int | tuple[int, int] | str:
  """Zero padding of a conv as `rmjax.models.plain.Conv.padding` takes it: an int (every side),
  `(low, high)`, or `SAME` (TensorFlow's rule, from the input's size when applied).

  "torch": `kernel_size // 2` everywhere. "keras": TensorFlow's "SAME": `SAME` where it depends
  on the input's size (a strided k x k conv, k > 1: a stride-2 3x3 conv pads (0, 1) on even
  sizes, (1, 1) on odd ones); elsewhere its fixed value — `k - 1` in all, the odd one at the
  end (a stride-1 3x3 conv pads 1, a 1x1 conv nothing, at every size). "keras_unsized": "SAME"
  on even sizes, `(k // 2 - 1, k // 2)`, at every size: Keras' `correct_pad` for an unknown size
  (a MobileNetV2's stem is "keras" either way: `MobileNetV2.layout`).
  """
  if padding == "torch":
    return kernel_size // 2
  if stride > 1 and kernel_size > 1:
    return SAME if padding == "keras" else (kernel_size // 2 - 1, kernel_size // 2)
  total = kernel_size - 1
  low, high = total // 2, total - total // 2
  return low if low == high else (low, high)


def conv(
  features: int,
  kernel_size: int,
  stride: int = 1,
  name: str | None = None,
  *,
  groups: int = 1,
  padding: str = "torch",
) -> Conv:
  """A bias-free conv, `groups` groups, padded as `conv_padding` says."""
  pad = conv_padding(kernel_size, stride, padding)
  if pad == SAME:
    pads = "SAME"  # lax's, TensorFlow's rule (`plain.same_pads`), per axis when applied
  else:
    pads = ((pad, pad),) * 2 if isinstance(pad, int) else (pad, pad)
  return Conv(
    features,
    (kernel_size, kernel_size),
    strides=(stride, stride),
    padding=pads,
    feature_group_count=groups,
    use_bias=False,
    kernel_init=conv_init,
    name=name,
  )


def batch_norm(train: bool, name: str, epsilon: float = BN_EPSILON) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train, momentum=BN_MOMENTUM, epsilon=epsilon, name=name
  )


def depthwise(features: int, stride: int, name: str, padding: str = "torch") -> Conv:
  """A depthwise 3x3 conv: one group per channel."""
  return conv(features, 3, stride, name, groups=features, padding=padding)


class MobileBlock(nn.Module):
  """Fields shared by the MobileNet blocks: widths in and out, stride, activation name, BN
  epsilon and padding convention (see `conv_padding`)."""

  in_features: int
  features: int
  strides: int = 1
  activation: str = "relu"
  bn_epsilon: float = BN_EPSILON
  padding: str = "torch"

  def __post_init__(self):
    _check_activation(self.activation)
    _check_padding(self.padding)
    super().__post_init__()

  @property
  def out_features(self) -> int:
    return self.features

  def bn(self, train: bool, name: str) -> nn.BatchNorm:
    return batch_norm(train, name, self.bn_epsilon)


class ConvBN(MobileBlock):
  """A k x k conv (padded as `padding` says) + BN + activation."""

  kernel_size: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv(self.features, self.kernel_size, self.strides, name="conv", padding=self.padding)(x)
    return ACTIVATIONS[self.activation](self.bn(train, "bn")(x))


def stem_block(
  features: int,
  stem: str,
  activation: str,
  *,
  bn_epsilon: float = BN_EPSILON,
  padding: str = "torch",
) -> ConvBN:
  """The MobileNets' stem: a 3x3 ConvBN, stride 1 for `stem="cifar"`, 2 for `"imagenet"`."""
  check_stem(stem)
  _check_activation(activation)
  stride = 1 if stem == "cifar" else 2
  return ConvBN(
    3,
    features,
    stride,
    activation,
    bn_epsilon,
    padding,
    kernel_size=3,
    parent=None,
    name="stem",
  )


class DepthwiseSeparable(MobileBlock):
  """MobileNetV1's block: depthwise 3x3 (stride here) + BN + act, pointwise 1x1 + BN + act."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = ACTIVATIONS[self.activation]
    x = depthwise(self.in_features, self.strides, "depthwise", self.padding)(x)
    x = act(self.bn(train, "depthwise_bn")(x))
    return act(self.bn(train, "pointwise_bn")(conv(self.features, 1, name="pointwise")(x)))


class InvertedResidual(MobileBlock):
  """MobileNetV2's block with a linear bottleneck.

  `hidden_features == 0` means no expanding conv (the depthwise conv runs on the input, as in
  the first block of MobileNetV2). The identity shortcut adds the input's first
  `shortcut_features` channels to the output's; `None` means every channel where the stride is 1
  and the widths match (Sandler et al.), else none. A partial shortcut is what the paper's
  re-designed network uses: a wide bottleneck of which only a part is carried across.
  """

  hidden_features: int = 0
  shortcut_features: int | None = None
  # Squeeze-and-excitation on the depthwise conv's activated output, `se_features` units wide
  # (0: none) — where MnasNet and MobileNetV3 put it (Tan et al. 2019, Howard et al. 2019).
  se_features: int = 0

  @property
  def shortcut(self) -> int:
    """How many leading channels the identity shortcut carries (0: no shortcut)."""
    if self.shortcut_features is None:
      return self.in_features if self.strides == 1 and self.in_features == self.features else 0
    return self.shortcut_features

  @property
  def depthwise_features(self) -> int:
    return self.hidden_features or self.in_features

  def __post_init__(self):
    if self.shortcut_features is not None and self.shortcut_features:
      limit = min(self.in_features, self.features)
      if self.strides != 1 or not 0 < self.shortcut_features <= limit:
        raise ValueError(
          f"shortcut_features={self.shortcut_features} needs stride 1 and at most "
          f"min(in, out) = {limit} channels (block {self.in_features} -> {self.features}, "
          f"stride {self.strides})"
        )
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = ACTIVATIONS[self.activation]
    y = x
    if self.hidden_features:
      y = act(self.bn(train, "expand_bn")(conv(self.hidden_features, 1, name="expand")(y)))
    y = depthwise(self.depthwise_features, self.strides, "depthwise", self.padding)(y)
    y = act(self.bn(train, "depthwise_bn")(y))
    if self.se_features:
      y = SqueezeExcitation(self.se_features, name="se")(y)
    y = self.bn(train, "project_bn")(conv(self.features, 1, name="project")(y))
    s = self.shortcut
    if s == self.features:
      return y + x
    if s:
      return jnp.concatenate([y[..., :s] + x[..., :s], y[..., s:]], axis=-1)
    return y


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One InvertedResidual: widths, stride and shortcut (see InvertedResidual)."""

  hidden: int
  out: int
  stride: int = 1
  shortcut: int | None = None


class MobileNetV2(BlockNetwork):
  """Stem ConvBN 3x3 -> InvertedResidual blocks -> ConvBN 1x1 (`last_features`) -> head.

  `stem="cifar"` gives the stem stride 1 (32x32 inputs), `"imagenet"` stride 2. Build the
  standard network with `mobilenetv2(...)` and the paper's with `mobilenetv2_to_v1(...)`.
  `bn_epsilon` and `padding` (see `conv_padding`) let it compute what a PyTorch- or a
  Keras-trained MobileNetV2 computes (`rmjax.interop`).
  """

  blocks: Sequence[BlockSpec]
  stem_features: int = 32
  last_features: int = 1280
  num_classes: int = 1000
  stem: str = "imagenet"
  activation: str = "relu6"
  bn_epsilon: float = BN_EPSILON
  padding: str = "torch"
  # > 0: squeeze-and-excitation in every block, make_divisible(depthwise width * se_ratio)
  # units wide (MobileNetV3's rule with its 0.25; see InvertedResidual.se_features).
  se_ratio: float = 0.0

  def layout(self) -> tuple[nn.Module, ...]:
    act, eps, pad = self.activation, self.bn_epsilon, self.padding
    # Keras' stem is a Conv2D(padding="same"), "SAME" whether or not the size was known.
    stem_pad = "keras" if pad == "keras_unsized" else pad
    parts: list[nn.Module] = [
      stem_block(self.stem_features, self.stem, act, bn_epsilon=eps, padding=stem_pad)
    ]
    width = self.stem_features
    for i, b in enumerate(self.blocks):
      parts.append(
        InvertedResidual(
          width,
          b.out,
          b.stride,
          act,
          eps,
          pad,
          hidden_features=b.hidden,
          shortcut_features=b.shortcut,
          se_features=make_divisible((b.hidden or width) * self.se_ratio) if self.se_ratio else 0,
          parent=None,
          name=f"block{i + 1}",
        )
      )
      width = b.out
    last = ConvBN(
      width, self.last_features, 1, act, eps, pad, kernel_size=1, parent=None, name="last"
    )
    parts.append(last)
    parts.append(Head(self.num_classes, parent=None, name="head"))
    return tuple(parts)

  def feature_taps(self) -> tuple[str, ...]:
    """The last block at each resolution (`last_blocks`): its linear bottleneck's output."""
    return last_blocks([b.stride for b in self.blocks])


def last_blocks(strides) -> tuple[str, ...]:
  """The names (`block{k}`, from 1) of the blocks followed by a strided block or by none: the
  last one at each resolution, where a MobileNet's feature maps are (its backbone mode)."""
  n = len(strides)
  return tuple(f"block{k + 1}" for k in range(n) if k == n - 1 or strides[k + 1] > 1)


def make_divisible(value: float, divisor: int = 8) -> int:
  """`value` rounded to a multiple of `divisor`, never below it nor 10% below `value` (the
  rounding of the reference MobileNetV2, which width multipliers go through)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


# Sandler et al., Table 2: expansion t, output channels c, repeats n, first stride s.
MOBILENETV2_SETTING = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


def mobilenetv2(
  *,
  width: float = 1.0,
  num_classes: int = 1000,
  stem: str = "imagenet",
  activation: str = "relu6",
  bn_epsilon: float = BN_EPSILON,
  padding: str = "torch",
  se_ratio: float = 0.0,
) -> MobileNetV2:
  """The standard MobileNetV2 with width multiplier `width` (3.4M parameters at 1.0).

  torchvision's `mobilenet_v2(width_mult=width)` is the default; Keras'
  `MobileNetV2(alpha=width)` is `bn_epsilon=1e-3, padding="keras"` (`"keras_unsized"` where
  Keras built it without a fixed input size). `se_ratio=0.25` adds squeeze-and-excitation to
  every block, as MobileNetV3 places it (`MobileNetV2.se_ratio`).
  """
  blocks, in_features = [], make_divisible(32 * width)
  for t, c, n, s in MOBILENETV2_SETTING:
    out = make_divisible(c * width)
    for i in range(n):
      blocks.append(BlockSpec(0 if t == 1 else in_features * t, out, s if i == 0 else 1))
      in_features = out
  return MobileNetV2(
    tuple(blocks),
    stem_features=make_divisible(32 * width),
    last_features=make_divisible(1280 * max(1.0, width)),
    num_classes=num_classes,
    stem=stem,
    activation=activation,
    bn_epsilon=bn_epsilon,
    padding=padding,
    se_ratio=se_ratio,
  )


def mobilenetv2_from_widths(
  stem_features: int,
  blocks: Sequence[tuple[int, int]],
  last_features: int,
  **kwargs,
) -> MobileNetV2:
  """A MobileNetV2 with Sandler et al.'s strides and the given widths: `blocks` holds each of
  the 17 blocks' `(hidden, out)` (hidden 0: no expanding conv), e.g. read off a weight file.
  Equal to `mobilenetv2(width=w, **kwargs)` for the `w` that gives these widths.
  """
  strides = [s if i == 0 else 1 for _, _, n, s in MOBILENETV2_SETTING for i in range(n)]
  if len(blocks) != len(strides):
    raise ValueError(f"MobileNetV2 has {len(strides)} blocks, got widths for {len(blocks)}")
  specs = tuple(BlockSpec(h, o, s) for (h, o), s in zip(blocks, strides, strict=True))
  return MobileNetV2(specs, stem_features=stem_features, last_features=last_features, **kwargs)


def mobilenetv2_width(model: MobileNetV2) -> float | None:
  """The published width multiplier (0.35 ... 1.4) whose `mobilenetv2` has `model`'s widths,
  or None."""
  for width in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
    ref = mobilenetv2(width=width)
    widths = (ref.blocks, ref.stem_features, ref.last_features)
    if widths == (tuple(model.blocks), model.stem_features, model.last_features):
      return width
  return None


# Howard et al., Table 1: (depthwise width, its stride, pointwise output width) per block.
MOBILENETV1_BLOCKS = (
  (32, 1, 64),
  (64, 2, 128),
  (128, 1, 128),
  (128, 2, 256),
  (256, 1, 256),
  (256, 2, 512),
  *[(512, 1, 512)] * 5,
  (512, 2, 1024),
  (1024, 1, 1024),
)


def _v1_width(channels: int, width: float) -> int:
  # Howard et al.'s width multiplier: int(alpha * d), at least 8 channels.
  return max(8, int(channels * width))


def mobilenetv1_blocks(width: float) -> list[tuple[int, int, int]]:
  """MOBILENETV1_BLOCKS with the width multiplier applied."""
  return [(_v1_width(d, width), s, _v1_width(p, width)) for d, s, p in MOBILENETV1_BLOCKS]


class MobileNetV1(BlockNetwork):
  """Stem ConvBN 3x3 (32 * width) -> 13 DepthwiseSeparable blocks -> head (Howard et al.)."""

  width: float = 1.0
  num_classes: int = 1000
  stem: str = "imagenet"
  activation: str = "relu6"

  def layout(self) -> tuple[nn.Module, ...]:
    act = self.activation
    features = _v1_width(32, self.width)
    parts: list[nn.Module] = [stem_block(features, self.stem, act)]
    for i, (_, s, out) in enumerate(mobilenetv1_blocks(self.width)):
      parts.append(DepthwiseSeparable(features, out, s, act, parent=None, name=f"block{i + 1}"))
      features = out
    parts.append(Head(self.num_classes, parent=None, name="head"))
    return tuple(parts)

  def feature_taps(self) -> tuple[str, ...]:
    """The last block at each resolution (`last_blocks`)."""
    return last_blocks([s for _, s, _ in mobilenetv1_blocks(self.width)])


def mobilenetv2_to_v1(
  *,
  width: float = 1.0,
  num_classes: int = 1000,
  stem: str = "imagenet",
  activation: str = "relu",
  bottleneck_multiplier: int = 4,
) -> MobileNetV2:
  """The paper's re-designed MobileNetV2 (Sec. 4.4, 5.3): RM + fusion gives MobileNetV1(width).

  Derived from MobileNetV1's widths: block k has V1's k-th depthwise conv and stride. Its
  identity shortcut carries `c_k` = a quarter of V1's k-th pointwise width, wherever the stride
  is 1 and `c_{k-1} == c_k` (the stride-1 blocks but the first); the bottleneck between blocks
  is `bottleneck_multiplier * c_k` wide (only the first `c_k` channels are carried across).
  After RM the depthwise conv is `hidden + c_{k-1}` wide, so `hidden = V1 width - c_{k-1}`;
  the projecting 1x1 of block k and the expanding 1x1 of block k+1 fuse into V1's pointwise
  conv k (Eq. 5); block 13's projection fuses with the last 1x1 conv (V1's pointwise 13).

  A wide bottleneck is what makes the conversion pay off: with `bottleneck_multiplier=1` (a
  true narrow bottleneck) the fused pointwise convs cost more than the pairs they replace.
  """
  if bottleneck_multiplier < 1:
    raise ValueError(f"bottleneck_multiplier must be >= 1, got {bottleneck_multiplier}")
  v1 = mobilenetv1_blocks(width)
  carried = [max(1, pointwise // 4) for _, _, pointwise in v1]
  blocks = []
  for k, (dw, stride, _) in enumerate(v1):
    has_shortcut = k > 0 and stride == 1 and carried[k - 1] == carried[k]
    shortcut = carried[k] if has_shortcut else 0
    # Block 1's depthwise conv runs on the stem output directly, as in MobileNetV2.
    hidden = 0 if k == 0 else dw - shortcut
    blocks.append(BlockSpec(hidden, carried[k] * bottleneck_multiplier, stride, shortcut))
  return MobileNetV2(
    tuple(blocks),
    stem_features=_v1_width(32, width),
    last_features=v1[-1][2],
    num_classes=num_classes,
    stem=stem,
    activation=activation,
  )
