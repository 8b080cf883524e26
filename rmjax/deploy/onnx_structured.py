"""The structured form of a plain network as ONNX: RM's Dirac zeros skipped, as in `plain.apply(...,
structured=True)` (rmjax.models.structured).

`to_structured_onnx` is `rmjax.deploy.onnx.to_onnx`, then a graph rewrite: each Conv node
`layers_{i}` whose layer records Dirac structure (`Conv.reserved` / `merged`) becomes
  - reserved outputs: the learned conv on its input channels, Concat with the copied channels —
    a strided Slice of the input (the centre tap's samples) times their centre tap (+ bias);
  - merged columns: the learned conv on the other inputs, plus the shortcut — a per-channel Mul
    of the strided input (identity) or a 1x1 Conv of it (projection) — by Add.
The names follow `to_onnx`'s (`layers_{i}/main`, `layers_{i}/copies`, ...), the output is still
`layers_{i}`; a conv whose padding does not centre its taps on the input (TensorFlow's "same",
or asymmetric pads that shift the centre) is left dense, which is exact too. Unchecked, as
`to_onnx` is: `rmjax.bench.onnx_timing` checks it against JAX before it times it.

  >>> model = to_structured_onnx(plain, variables, (32, 32, 3))
  >>> [n.op_type for n in model.graph.node][:4]
  ['Transpose', 'Conv', 'Relu', 'Slice']
"""

from __future__ import annotations

import jax
import numpy as np

from rmjax.deploy import onnx as onnx_export
from rmjax.models.plain import SAME, Conv
from rmjax.models.structured import plan


def _channels(g, x: str, start: int, stop: int, total: int, name: str) -> str:
  """Channels `[start, stop)` of NCHW tensor `x` of `total` channels (`x` itself if all: a Slice
  would copy it)."""
  if start == 0 and stop == total:
    return x
  return onnx_export._channels(g, x, start, stop, name)


def _centred(layer: Conv) -> bool:
  """Whether the centre tap of each output reads input `stride * i + (c - low)`, in range: a
  strided Slice of the input gives exactly the conv's output positions."""
  if layer.padding == SAME or not (layer.reserved or layer.merged):
    return False
  low, high = layer.pads
  c = layer.kernel_size // 2
  try:
    plan(layer)
  except ValueError:
    return False
  return low <= c and high == layer.kernel_size - 1 - c


def _centre(g, layer: Conv, x: str, name: str) -> str:
  """What the centre tap reads: `x[:, :, c - low :: stride, c - low :: stride]`."""
  start = layer.kernel_size // 2 - layer.pads[0]
  if start == 0 and layer.stride == 1:
    return x
  consts = {"starts": [start] * 2, "ends": [2**62] * 2, "axes": [2, 3], "steps": [layer.stride] * 2}
  inputs = [g.const(f"{name}/{key}", value, np.int64) for key, value in consts.items()]
  return g.node("Slice", [x, *inputs], name)


def _conv(g, layer: Conv, x: str, kernel, bias, groups: int, name: str) -> str:
  """A Conv of `layer`'s size, stride and pads with `kernel` (HWIO) and `bias` (or None)."""
  inputs = [x, g.const(f"{name}/kernel", np.transpose(kernel, (3, 2, 0, 1)))]
  if bias is not None:
    inputs.append(g.const(f"{name}/bias", bias))
  k, (low, high) = kernel.shape[0], layer.pads if kernel.shape[0] > 1 else (0, 0)
  stride = layer.stride if k > 1 else 1
  attrs = dict(kernel_shape=[k, k], strides=[stride] * 2, pads=[low, low, high, high])
  return g.node("Conv", inputs, name, dilations=[1, 1], group=groups, **attrs)


def _scaled(g, x: str, scale: np.ndarray, bias: np.ndarray | None, name: str) -> str:
  """`x * scale + bias` per channel (NCHW), each step left out where it does nothing."""
  if not np.all(scale == 1):
    x = g.node("Mul", [x, g.const(f"{name}/scale", scale.reshape(1, -1, 1, 1))], f"{name}/mul")
  if bias is not None and np.any(bias != 0):
    x = g.node("Add", [x, g.const(f"{name}/bias", bias.reshape(1, -1, 1, 1))], f"{name}/add")
  return x


def _reserving(g, layer: Conv, kernel, bias, x: str, name: str) -> str:
  p = plan(layer)
  main_kernel = kernel[..., : p.main_out]
  if layer.groups == 1:
    main_kernel = main_kernel[:, :, : p.main_in]
  cin = layer.in_features
  inputs = _channels(g, x, 0, p.main_in, cin, f"{name}/main_in")
  main_bias = None if bias is None else bias[: p.main_out]
  main = _conv(g, layer, inputs, main_kernel, main_bias, p.main_groups, f"{name}/main")
  sources = _channels(g, x, p.sources[0], p.sources[-1] + 1, cin, f"{name}/sources")
  copies = _centre(g, layer, sources, f"{name}/centre")
  scale = kernel[p.centre, p.centre, p.taps, p.outs]
  copies = _scaled(g, copies, scale, None if bias is None else bias[p.outs], f"{name}/copies")
  return g.node("Concat", [main, copies], name, axis=1)


def _merging(g, layer: Conv, kernel, bias, x: str, name: str) -> str:
  p, m, c = plan(layer), layer.merged, layer.kernel_size // 2
  cin = layer.in_features
  inputs = _channels(g, x, 0, p.main_in, cin, f"{name}/main_in")
  main = _conv(g, layer, inputs, kernel[:, :, : p.main_in], bias, 1, f"{name}/main")
  shortcut = _channels(g, x, p.main_in, cin, cin, f"{name}/shortcut_in")
  shortcut = _centre(g, layer, shortcut, f"{name}/centre")
  if not layer.merged_identity:
    projection = kernel[c : c + 1, c : c + 1, p.main_in :]
    shortcut = _conv(g, layer, shortcut, projection, None, 1, f"{name}/shortcut")
    return g.node("Add", [main, shortcut], name)
  added = _scaled(g, shortcut, kernel[c, c, p.main_in + np.arange(m), np.arange(m)], None, name)
  if m == layer.out_features:
    return g.node("Add", [main, added], name)
  head = _channels(g, main, 0, m, layer.out_features, f"{name}/head")
  tail = _channels(g, main, m, layer.out_features, layer.out_features, f"{name}/tail")
  head = g.node("Add", [head, added], f"{name}/sum")
  return g.node("Concat", [head, tail], name, axis=1)


def to_structured_onnx(
  plain, variables, input_shape, *, layout: str = "nhwc", features: bool = False
):
  """`to_onnx(plain, variables, input_shape, layout=layout, features=features)` with each
  structured conv rewritten as above (an `onnx.ModelProto`, unchecked). Same inputs, outputs
  and function."""
  onnx, _ = onnx_export._require()
  model = onnx_export.to_onnx(plain, variables, input_shape, layout=layout, features=features)
  variables = jax.device_get(variables)
  g = onnx_export._Graph(onnx)
  nodes, dropped = [], set()
  for node in model.graph.node:
    i = node.name.removeprefix("layers_")
    layer = plain.layers[int(i)] if i.isdigit() and node.name != i else None
    if node.op_type != "Conv" or not isinstance(layer, Conv) or not _centred(layer):
      nodes.append(node)
      continue
    params = variables["params"][node.name]
    kernel = np.asarray(params["kernel"], np.float32)
    bias = np.asarray(params["bias"], np.float32) if layer.use_bias else None
    g.nodes = []
    rewrite = _reserving if layer.reserved else _merging
    rewrite(g, layer, kernel, bias, node.input[0], node.name)
    nodes += g.nodes
    dropped.update(node.input[1:])
  kept = [t for t in model.graph.initializer if t.name not in dropped]
  del model.graph.node[:], model.graph.initializer[:]
  model.graph.node.extend(nodes)
  model.graph.initializer.extend([*kept, *g.initializers])
  return model
