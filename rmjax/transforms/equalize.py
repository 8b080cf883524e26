"""Equalising the ranges of reserved channels: a function-preserving rescale for int8.

In an RM plain network the first conv of a converted block outputs the block's own channels
and, after them, the reserved ones: copies of the block input (Sec. 4.1, Eq. 2). The two kinds
share one tensor, but their values come from different places — own channels are BN-normalised
branch activations, reserved ones the residual stream, which grows with depth — so one
per-tensor int8 scale (what ONNX Runtime and TensorRT give activations) fits one kind and
crushes the other.

The fix keeps the network exactly the same function (cross-layer equalisation, Nagel et al.
2019, "Data-Free Quantization", Sec. 4.1, applied to activations): multiply output channel c of
the producing conv (kernel column and bias) by `s_c > 0` and the consuming conv's input channel
c by `1 / s_c`. Between them is a ReLU or a PReLU, both positively homogeneous
(`f(s x) = s f(x)` for `s > 0`), so the consumer sees exactly what it saw before. A clipped
activation (ReLU6, a PReLU's clipped channels) is not homogeneous; those channels keep s = 1.

  >>> ranges = {i: max_abs_activation_after(i) for i, _, _ in reserved_pairs(plain)}
  >>> variables = equalize_reserved(plain, variables, ranges)   # same logits, int8-friendly
"""

from __future__ import annotations

import jax.numpy as jnp

from rmjax.models.plain import Conv, PlainNet, PReLU, ReLU


def _homogeneous(layer, channels: int) -> bool:
  """Whether `layer` commutes with a positive per-channel scale on its last `channels` channels."""
  if isinstance(layer, ReLU):
    return layer.max_value is None
  if isinstance(layer, PReLU):
    return layer.max_value is None or layer.clipped <= layer.features - channels
  return False


def reserved_pairs(plain: PlainNet) -> list[tuple[int, int, int]]:
  """`(producer, activation, consumer)` layer indices where a conv with reserved output channels
  (`Conv.reserved`, its last ones) feeds a positively homogeneous activation and then a conv:
  the places `equalize_reserved` can rescale. Read from the architecture alone.

  >>> reserved_pairs(plain)[:2]   # an RM ResNet-20: block convs 2 -> 4, 6 -> 8, ...
  [(2, 3, 4), (6, 7, 8)]
  """
  pairs = []
  layers = plain.layers
  for i in range(len(layers) - 2):
    producer, act, consumer = layers[i : i + 3]
    if not (isinstance(producer, Conv) and producer.reserved and isinstance(consumer, Conv)):
      continue
    if _homogeneous(act, producer.reserved):
      pairs.append((i, i + 1, i + 2))
  return pairs


def reserved_scales(plain: PlainNet, ranges, *, strength: float = 1.0):
  """Per producer, the output-channel scales `s` (1 on own channels) that bring each reserved
  channel's max |activation| to the own channels' max: `s_c = (own max / max_c) ** strength`.

  `ranges`: `{producer index: max |activation| per channel}` measured after the activation on
  calibration data. `strength` 1 equalises fully; 0.5 meets halfway, which leaves the
  consumer's weights (scaled by 1 / s) less spread. Channels that never fire (max 0) keep 1.
  """
  scales = {}
  for i, _, _ in reserved_pairs(plain):
    r = plain.layers[i].reserved
    m = jnp.asarray(ranges[i], jnp.float32)
    own = jnp.max(m[:-r])
    tiny = jnp.finfo(jnp.float32).tiny
    reserved = jnp.where(m[-r:] > tiny, (own / jnp.maximum(m[-r:], tiny)) ** strength, 1.0)
    scales[i] = jnp.concatenate([jnp.ones_like(m[:-r]), reserved])
  return scales


def rescale_channels(plain: PlainNet, variables, scales):
  """`variables` with producer i's output channels times `scales[i]` and its consumer's (layer
  i + 2, a conv) input channels divided by them; the function is unchanged where the layer
  between is positively homogeneous (see `reserved_pairs`). Pure: new arrays, inputs untouched.
  """
  params = dict(variables["params"])
  for i, s in scales.items():
    name, next_name = f"layers_{i}", f"layers_{i + 2}"
    producer = dict(params[name])
    producer["kernel"] = producer["kernel"] * s
    if "bias" in producer:
      producer["bias"] = producer["bias"] * s
    params[name] = producer
    consumer = dict(params[next_name])
    consumer["kernel"] = _scale_inputs(consumer["kernel"], 1.0 / s, plain.layers[i + 2].groups)
    params[next_name] = consumer
  return {**variables, "params": params}


def _scale_inputs(kernel, factor, groups: int):
  """HWIO `kernel` of a conv with `groups` groups, input channel c multiplied by `factor[c]`
  (input c is slot `c % (in / groups)` of group `c // (in / groups)`)."""
  kh, kw, per_group, out = kernel.shape
  factor = jnp.reshape(factor, (groups, per_group)).T.astype(kernel.dtype)  # (per_group, groups)
  grouped = jnp.reshape(kernel, (kh, kw, per_group, groups, out // groups))
  return jnp.reshape(grouped * factor[None, None, :, :, None], kernel.shape)


def equalize_reserved(plain: PlainNet, variables, ranges, *, strength: float = 1.0):
  """The same function with every reserved channel's activation range brought to its own
  channels' (`reserved_scales`, `rescale_channels`): per-tensor int8 scales then fit both.

  >>> eq = equalize_reserved(plain, variables, ranges)
  >>> plain.apply(eq, x)   # == plain.apply(variables, x) up to float32 rounding
  """
  return rescale_channels(plain, variables, reserved_scales(plain, ranges, strength=strength))
