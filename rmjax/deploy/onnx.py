"""A plain network as an ONNX model, built from its layer table and checked in ONNX Runtime.

  >>> export_onnx(plain, variables, (224, 224, 3), "net.onnx")  # verified, then written
  >>> logits = load_onnx("net.onnx")(images)  # float32 NHWC, any batch size

`to_onnx` writes the graph with `onnx.helper` from `plain.layers` itself, one layer onto one or
two ONNX operators (a plain network is a chain of standard layers, so there is nothing to
trace, and every attribute is the layer's own): Conv (`group`, explicit `pads`, which may be
asymmetric, or for `padding="same"` (TensorFlow's "SAME") `auto_pad="SAME_UPPER"`), Relu, Clip
(ReLU6), PRelu followed by `Min` with a per-channel bound (max_value on the first `clipped`
channels, +inf on the rest: exact, as `min(y, inf) = y`), MaxPool (ONNX pads max pooling with
-inf, as PyTorch and rmjax do), GlobalAveragePool + Flatten, Gemm, and the squeeze-and-excitation
layer (`SqueezeExcite`, see `_squeeze_excite`). `export_onnx` runs the model
in ONNX Runtime (CPU) on a random batch against `plain.apply` and writes nothing unless it
agrees; on a mismatch the error names the layer that computes something else (`worst_layer`).

Layout: the artefact takes NHWC images by default, `layout="nchw"` makes one that takes NCHW.
NHWC because everything else rmjax hands out does — the model, PLAIN, the StableHLO and
SavedModel artefacts written beside it by `convert.py --export` — so one preprocessing feeds
all of them and the export is checked on the very batch the others are. The graph computes in
NCHW (ONNX's Conv layout): the NHWC artefact begins with one Transpose of the input (one copy
of the images). `nchw` drops it, for pipelines built around PyTorch-style inputs. The model's
metadata property `layout` says which one a file takes.

BatchNorm (the kept-BN form, `convert.py --keep_bn`) becomes a BatchNormalization node, not a
fold into the conv before it: the graph stays the layer table one to one (node `layers_3` is
`plain.layers[3]`, so the per-layer check and a quantizer's calibration map back to it), and
folding is already what the deploy form is (`rm_convert(keep_bn=False)`, bit for bit the
network rmjax verified). ONNX Runtime fuses Conv + BatchNormalization itself when it loads the
model.

Opset 21 (IR version 10): the newest of onnx 1.16, so that every onnx and onnxruntime the
`deploy` extra allows reads the file (tests/onnx_test.py passes with onnx 1.16 + onnxruntime
1.19, the oldest pair, and with onnx 1.23 + onnxruntime 1.32).

Names: every node is named after its output. `layers_{i}` is layer i's output, `layers_{i}/...`
a step inside it, and its weights are `layers_{i}/kernel`, `/bias`, `/scale`, `/mean`, `/var`,
`/slope` (Flax's `variables[...]["layers_{i}"]`). The graph input is `images`
(`[batch, *input_shape]`, the batch dimension symbolic), the output `logits` — or, with
`features=True` (backbone mode: a PlainNet with taps), one output per tap, `features_{k}` the
output of layer `plain.taps[k]`, in the artefact's layout; the layers after the last tap (the
head) are left out, as `plain.apply(..., features=True)` does not run them.

onnx and onnxruntime are imported only when a function here is called; without them that call
raises an ImportError that says `pip install 'rmjax[deploy]'`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np

from rmjax import atomic, verify
from rmjax.deploy.jax_formats import FEATURES
from rmjax.models.plain import (
  SAME,
  BatchNorm,
  Conv,
  Dense,
  GlobalAvgPool,
  MaxPool,
  PlainNet,
  PReLU,
  ReLU,
  SqueezeExcite,
)

OPSET = 21
IR_VERSION = 10
LAYOUTS = ("nhwc", "nchw")
INPUT, OUTPUT = "images", "logits"
INSTALL = "pip install 'rmjax[deploy]'"
_MAX_BYTES = 2**31 - 1  # protobuf's limit on one serialized message
_NCHW, _NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


class OnnxExportError(ValueError):
  """A network that cannot be exported, or an export that does not compute what it should."""


def _require():
  """`(onnx, onnxruntime)`, or an ImportError that says how to install them."""
  try:
    import onnx
    import onnxruntime
  except ImportError as e:
    raise ImportError(f"ONNX export needs onnx and onnxruntime ({e}): {INSTALL}") from None
  return onnx, onnxruntime


class _Graph:
  """Nodes and initializers of the graph under construction, named as the module says, and
  the rank of the tensor the next layer takes: 4 (NCHW images) or 2 (NC features)."""

  def __init__(self, onnx):
    self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
    self.nodes, self.initializers = [], []
    self.rank = 4

  def const(self, name: str, value, dtype=np.float32) -> str:
    self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
    return name

  def node(self, op: str, inputs, output: str, **attrs) -> str:
    self.nodes.append(self.helper.make_node(op, list(inputs), [output], name=output, **attrs))
    return output


# One emitter per layer type: (graph, layer, variables of the layer, input tensor, layer name)
# -> output tensor; `_EMITTERS` below says which input ranks each takes.


def _conv(g: _Graph, layer: Conv, v, x: str, name: str) -> str:
  # HWIO -> OIHW; pads are [top, left, bottom, right]: `(low, high)` per spatial axis.
  kernel = np.transpose(np.asarray(v["params"]["kernel"]), (3, 2, 0, 1))
  inputs = [x, g.const(f"{name}/kernel", kernel)]
  if layer.use_bias:
    inputs.append(g.const(f"{name}/bias", v["params"]["bias"]))
  if layer.padding == SAME:
    # TensorFlow's "SAME" (from the input's size), which ONNX calls SAME_UPPER.
    padding = {"auto_pad": "SAME_UPPER"}
  else:
    low, high = layer.pads
    padding = {"pads": [low, low, high, high]}
  return g.node(
    "Conv",
    inputs,
    name,
    kernel_shape=[layer.kernel_size] * 2,
    strides=[layer.stride] * 2,
    dilations=[1, 1],
    group=layer.groups,
    **padding,
  )


def _batch_norm(g: _Graph, layer: BatchNorm, v, x: str, name: str) -> str:
  # Inference mode: (x - mean) / sqrt(var + eps) * scale + bias, flax's running-average form.
  params, stats = v["params"], v["batch_stats"]
  inputs = [x] + [
    g.const(f"{name}/{key}", value)
    for key, value in (
      ("scale", params["scale"]),
      ("bias", params["bias"]),
      ("mean", stats["mean"]),
      ("var", stats["var"]),
    )
  ]
  return g.node("BatchNormalization", inputs, name, epsilon=float(layer.epsilon))


def _relu(g: _Graph, layer: ReLU, v, x: str, name: str) -> str:
  del v
  if layer.max_value is None:
    return g.node("Relu", [x], name)
  bounds = [g.const(f"{name}/min", 0.0), g.const(f"{name}/max", layer.max_value)]
  return g.node("Clip", [x, *bounds], name)


def _prelu(g: _Graph, layer: PReLU, v, x: str, name: str) -> str:
  # Per-channel arrays broadcast over NCHW as (C, 1, 1).
  shape = (layer.features,) + (1,) * (g.rank - 2)
  slope = np.reshape(np.asarray(v["params"]["slope"]), shape)
  if layer.max_value is None or layer.clipped == 0:
    return g.node("PRelu", [x, g.const(f"{name}/slope", slope)], name)
  y = g.node("PRelu", [x, g.const(f"{name}/slope", slope)], f"{name}/prelu")
  clipped = np.arange(layer.features) < layer.clipped
  bound = np.where(clipped, np.float32(layer.max_value), np.float32(np.inf)).reshape(shape)
  return g.node("Min", [y, g.const(f"{name}/max", bound)], name)


def _max_pool(g: _Graph, layer: MaxPool, v, x: str, name: str) -> str:
  del v
  p = layer.padding
  return g.node(
    "MaxPool",
    [x],
    name,
    kernel_shape=[layer.window] * 2,
    strides=[layer.stride] * 2,
    pads=[p] * 4,
  )


def _global_avg_pool(g: _Graph, layer: GlobalAvgPool, v, x: str, name: str) -> str:
  del layer, v
  return g.node("Flatten", [g.node("GlobalAveragePool", [x], f"{name}/pool")], name, axis=1)


def _dense(g: _Graph, layer: Dense, v, x: str, name: str) -> str:
  del layer
  kernel = g.const(f"{name}/kernel", v["params"]["kernel"])  # (in, out): Gemm's B, untransposed
  return g.node("Gemm", [x, kernel, g.const(f"{name}/bias", v["params"]["bias"])], name)


def _channels(g: _Graph, x: str, start: int, stop: int, name: str) -> str:
  """Channels `[start, stop)` of NCHW tensor `x`."""
  ends = [g.const(f"{name}/{key}", [v], np.int64) for key, v in (("starts", start), ("ends", stop))]
  return g.node("Slice", [x, *ends, g.const(f"{name}/axes", [1], np.int64)], name)


def _squeeze_excite(g: _Graph, layer: SqueezeExcite, v, x: str, name: str) -> str:
  """`rmjax.models.squeeze_excite`: the first `channels` channels times
  `sigmoid(fc2(relu(fc1(their mean over H, W))))`, the others concatenated back untouched.
  fc1 and fc2 are 1x1 Convs on the pooled `(N, C, 1, 1)` tensor — dense layers that keep it
  4-D, so the gate broadcasts over H and W in the Mul without reshapes."""
  c, params = layer.channels, v["params"]
  gated = x if c == layer.features else _channels(g, x, 0, c, f"{name}/gated")
  s = g.node("GlobalAveragePool", [gated], f"{name}/squeeze")
  for fc, act in (("fc1", "Relu"), ("fc2", "Sigmoid")):
    kernel = np.asarray(params[fc]["kernel"]).T[:, :, None, None]  # (in, out) -> OIHW 1x1
    weights = [
      g.const(f"{name}/{fc}/kernel", kernel),
      g.const(f"{name}/{fc}/bias", params[fc]["bias"]),
    ]
    s = g.node("Conv", [s, *weights], f"{name}/{fc}", kernel_shape=[1, 1])
    s = g.node(act, [s], f"{name}/{fc}/{act.lower()}")
  if c == layer.features:
    return g.node("Mul", [x, s], name)
  y = g.node("Mul", [gated, s], f"{name}/excited")
  passed = _channels(g, x, c, layer.features, f"{name}/passed")
  return g.node("Concat", [y, passed], name, axis=1)


# Layer type -> (emitter, input ranks it takes, output rank; None: the input's).
_EMITTERS = {
  Conv: (_conv, (4,), 4),
  BatchNorm: (_batch_norm, (4, 2), None),
  ReLU: (_relu, (4, 2), None),
  PReLU: (_prelu, (4, 2), None),
  MaxPool: (_max_pool, (4,), 4),
  SqueezeExcite: (_squeeze_excite, (4,), 4),
  GlobalAvgPool: (_global_avg_pool, (4,), 2),
  Dense: (_dense, (2,), 2),
}


def _layer_variables(variables, i: int) -> dict:
  """`{collection: arrays}` of layer i (empty for layers without weights)."""
  name = f"layers_{i}"
  return {col: tree[name] for col, tree in variables.items() if name in tree}


def _emit_layers(g: _Graph, layers, variables, x: str) -> list[tuple[str, int]]:
  """Adds the nodes of `layers` (a PlainNet's, from its first) after tensor `x` (NCHW);
  returns each layer's output and its rank."""
  outputs = []
  for i, layer in enumerate(layers):
    if type(layer) not in _EMITTERS:
      raise OnnxExportError(
        f"layer {i} ({type(layer).__name__}: {layer}) has no ONNX mapping; to_onnx exports "
        f"{', '.join(t.__name__ for t in _EMITTERS)}"
      )
    emit, ranks, out_rank = _EMITTERS[type(layer)]
    if g.rank not in ranks:
      what = "image (4-D)" if 4 in ranks else "feature (2-D)"
      raise OnnxExportError(
        f"layer {i} ({type(layer).__name__}: {layer}) takes {what} input but gets a "
        f"{g.rank}-D one; to_onnx exports a chain of convolutional layers, then "
        "GlobalAvgPool, then Dense"
      )
    x = emit(g, layer, _layer_variables(variables, i), x, f"layers_{i}")
    g.rank = out_rank or g.rank
    outputs.append((x, g.rank))
  return outputs


def to_onnx(
  plain: PlainNet, variables, input_shape, *, layout: str = "nhwc", features: bool = False
):
  """The ONNX model (`onnx.ModelProto`, opset `OPSET`) of `plain` with `variables`, unchecked.

  Args:
    input_shape: one image without the batch axis, NHWC as rmjax takes it, e.g. `(224, 224, 3)`.
    layout: "nhwc" (the default) or "nchw": the layout of the model's input `images` (and of
      its output, if the network ends before a GlobalAvgPool).
    features: one output `features_{k}` per tap (`plain.taps`) instead of `logits`.

  Raises OnnxExportError naming the layer (index and type) that has no ONNX form. Node and
  initializer names map back to `plain.layers` (see the module docstring), so a quantizer or a
  graph rewrite can start from the returned model.

  Example:
    >>> model = to_onnx(plain, variables, (32, 32, 3))
    >>> [n.op_type for n in model.graph.node][:3]
    ['Transpose', 'Conv', 'Relu']
  """
  onnx, _ = _require()
  if layout not in LAYOUTS:
    raise OnnxExportError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
  input_shape = tuple(int(d) for d in input_shape)
  variables = jax.device_get(variables)
  x = jax.ShapeDtypeStruct((1, *input_shape), np.float32)
  shapes = jax.eval_shape(functools.partial(plain.apply, features=features), variables, x)
  g = _Graph(onnx)
  x = INPUT if layout == "nchw" else g.node("Transpose", [INPUT], f"{INPUT}/nchw", perm=_NCHW)
  if features:
    layers = _emit_layers(g, plain.layers[: plain.taps[-1] + 1], variables, x)
    taps = zip(plain.taps, shapes, strict=True)
    ends = [(FEATURES.format(k), layers[i], y) for k, (i, y) in enumerate(taps)]
  else:
    ends = [(OUTPUT, _emit_layers(g, plain.layers, variables, x)[-1], shapes)]
  helper, floats = onnx.helper, onnx.TensorProto.FLOAT
  outputs = []
  for name, (y, rank), shape in ends:
    if rank == 4 and layout == "nhwc":
      g.node("Transpose", [y], name, perm=_NHWC)
    else:
      g.node("Identity", [y], name)
    out_shape = ["batch", *shape.shape[1:]]
    if layout == "nchw" and len(out_shape) == 4:
      out_shape = [out_shape[i] for i in _NCHW]
    outputs.append(helper.make_tensor_value_info(name, floats, out_shape))
  in_shape = ["batch", *input_shape]
  if layout == "nchw":
    in_shape = [in_shape[i] for i in _NCHW]
  graph = helper.make_graph(
    g.nodes,
    "PlainNet",
    [helper.make_tensor_value_info(INPUT, floats, in_shape)],
    outputs,
    initializer=g.initializers,
  )
  model = helper.make_model(
    graph,
    opset_imports=[helper.make_opsetid("", OPSET)],
    ir_version=IR_VERSION,
    producer_name="rmjax",
    doc_string=plain.summary(),
  )
  helper.set_model_props(model, {"layout": layout})
  return model


def _session(model_bytes: bytes, threads: int):
  _, ort = _require()
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  # ORT_ENABLE_ALL (onnxruntime's default, stated so that it stays) includes the NCHWc layout
  # transformer: without it (ORT_ENABLE_EXTENDED) the default suite's plain networks ran at
  # 0.3-0.85x on 2 cores (docs/benchmarks.md, "Serving on CPU"). The other options measured there
  # (NCHW input, no memory arena, parallel execution, spinning off) gained nothing consistent.
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  options.log_severity_level = 3  # errors only: the CLI's output is its report
  return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def load_onnx(path: str, *, threads: int = 2) -> Callable:
  """The function an ONNX artefact computes: images (in its layout, any batch) -> logits (or,
  for a features export, the tuple of feature maps), run by ONNX Runtime's CPU provider on
  `threads` threads.

  Example:
    >>> logits = load_onnx("/tmp/plain.onnx")(np.zeros((4, 32, 32, 3), np.float32))
  """
  _require()
  with open(path, "rb") as f:
    session = _session(f.read(), threads)
  return lambda images: _run(session, np.asarray(images, np.float32))


def _run(session, images: np.ndarray):
  """Logits, or the tuple of feature maps of a features export."""
  names = [o.name for o in session.get_outputs()]
  got = session.run(names, {INPUT: images})
  return got[0] if names == [OUTPUT] else tuple(got)


def _to_layout(images: np.ndarray, layout: str) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(images, _NCHW)) if layout == "nchw" else images


def export_onnx(
  plain: PlainNet,
  variables,
  input_shape,
  path: str,
  *,
  layout: str = "nhwc",
  check_batch: int = 8,
  tolerance: float = verify.TOLERANCE,
  threads: int = 2,
  features: bool = False,
  build: Callable | None = None,
) -> dict[str, float]:
  """Writes `plain` with its `variables` as an ONNX model to `path`, once it is checked.

  `build`: the graph builder, `to_onnx` by default (the registry's `onnx_structured` format
  passes `rmjax.deploy.onnx_structured.to_structured_onnx`: RM's Dirac convs as copies and
  adds, the faster one in ONNX Runtime for RM networks, docs/benchmarks.md).

  The check: ONNX Runtime (CPU) and `plain.apply` (float32, "highest" matmul precision) on
  `check_batch` N(0, 1) images; the model is refused when max |logit difference| > tolerance x
  max(1, max |logit|), the rule of `rmjax.verify` (with `features`, one output per tap, each
  held to that rule on its own scale). Then nothing is written, and the error names
  the layer whose output differs most relative to its own scale (`worst_layer`). The file is
  written atomically (`rmjax.atomic`). Returns the check (`verify.difference`).

  Example:
    >>> export_onnx(plain, variables, (32, 32, 3), "/tmp/plain.onnx")
    >>> load_onnx("/tmp/plain.onnx")(images)  # NHWC float32, any batch size
  """
  onnx, _ = _require()
  model = (build or to_onnx)(plain, variables, input_shape, layout=layout, features=features)
  if model.ByteSize() > _MAX_BYTES:
    raise OnnxExportError(
      f"the ONNX model needs {model.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB limit "
      "on one file (ONNX external data is not supported here)"
    )
  onnx.checker.check_model(model, full_check=True)
  data = model.SerializeToString()
  rng = np.random.default_rng(0)
  images = rng.standard_normal((check_batch, *input_shape)).astype(np.float32)
  want = verify.eval_logits(plain, variables, images, features=features)
  got = _run(_session(data, threads), _to_layout(images, layout))
  if layout == "nchw":
    nhwc = [np.transpose(y, _NHWC) if y.ndim == 4 else y for y in (got if features else [got])]
    got = tuple(nhwc) if features else nhwc[0]
  check = verify.difference(want, got)
  if not verify.within(check, tolerance):
    raise OnnxExportError(
      f"the ONNX model differs from the plain network by {check['max_abs_diff']:.3g} (max "
      f"|logit| {check['logit_scale']:.3g}, allowed {verify.bound(check, tolerance):.3g}): "
      f"{worst_layer(model, plain, variables, images, tolerance=tolerance, threads=threads)}; "
      "nothing was written"
    )
  atomic.write_bytes(path, data)
  return check


def _layer_of(node_name: str) -> int | None:
  head = node_name.split("/")[0]
  return int(head.removeprefix("layers_")) if head.startswith("layers_") else None


def _isolated(onnx, model):
  """`model` with each layer fed from outside: the tensor a layer takes from before it becomes
  a graph input `layers_{i}/input`, its output `layers_{i}` a graph output. The nodes of the
  model are kept as they are (weights included); those outside the layers are left out."""
  graph, helper = model.graph, onnx.helper
  owner = {out: _layer_of(node.name) for node in graph.node for out in node.output}
  weights = {t.name for t in graph.initializer}
  nodes, layers = [], []
  for node in graph.node:
    i = _layer_of(node.name)
    if i is None:
      continue
    node = onnx.NodeProto.FromString(node.SerializeToString())
    for k, name in enumerate(node.input):
      if name not in weights and owner.get(name) != i:
        node.input[k] = f"layers_{i}/input"
    nodes.append(node)
    if i not in layers:
      layers.append(i)
  layers = [i for i in layers if owner.get(f"layers_{i}") == i]
  floats = onnx.TensorProto.FLOAT
  graph = helper.make_graph(
    nodes,
    "layers",
    [helper.make_tensor_value_info(f"layers_{i}/input", floats, None) for i in layers],
    [helper.make_tensor_value_info(f"layers_{i}", floats, None) for i in layers],
    initializer=graph.initializer,
  )
  isolated = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
  return isolated, layers


def _jax_layer_outputs(plain: PlainNet, variables, images) -> list[np.ndarray]:
  """Each layer's output under JAX (NHWC or NC), computed one layer at a time in one program."""

  def run(variables, x):
    outputs = []
    for i, layer in enumerate(plain.layers):
      own = {col: {"layers_0": v} for col, v in _layer_variables(variables, i).items()}
      x = PlainNet((layer,)).apply(own, x)
      outputs.append(x)
    return outputs

  with jax.default_matmul_precision("highest"):
    return [np.asarray(y) for y in jax.jit(run)(variables, images)]


def compare_layers(model, plain: PlainNet, variables, images, *, threads: int = 2) -> list[dict]:
  """Layer by layer, how far `model` (an ONNX model of `plain`, e.g. from `to_onnx`, then
  edited or quantized) is from the plain network on NHWC `images`.

  Every layer runs in ONNX Runtime on the JAX network's own input to it, so an error shows at
  the layer that makes it, not at every layer after it. One row per layer:
  `{layer, type, max_abs_diff, scale (max |JAX output|), relative (diff / scale)}`.

  Example:
    >>> rows = compare_layers(to_onnx(plain, variables, (32, 32, 3)), plain, variables, x)
    >>> max(rows, key=lambda r: r["relative"])["layer"]
  """
  onnx, _ = _require()
  isolated, layers = _isolated(onnx, model)
  variables = jax.device_get(variables)
  images = np.asarray(images, np.float32)
  want = _jax_layer_outputs(plain, variables, images)
  ins = [images, *want[:-1]]
  nchw = [np.transpose(y, _NCHW) if y.ndim == 4 else y for y in [*ins, want[-1]]]
  feeds = {f"layers_{i}/input": np.ascontiguousarray(nchw[i]) for i in layers}
  got = _session(isolated.SerializeToString(), threads).run(None, feeds)
  rows = []
  for i, y in zip(layers, got, strict=True):
    w = np.transpose(want[i], _NCHW) if want[i].ndim == 4 else want[i]
    diff, scale = float(np.max(np.abs(w - y))), float(np.max(np.abs(w)))
    rows.append(
      {
        "layer": i,
        "type": type(plain.layers[i]).__name__,
        "max_abs_diff": diff,
        "scale": scale,
        "relative": diff / max(scale, float(np.finfo(np.float32).tiny)),
      }
    )
  return rows


def worst_layer(
  model, plain: PlainNet, variables, images, *, tolerance=verify.TOLERANCE, threads=2
) -> str:
  """In words: the layer of `model` that differs most from `plain`'s, relative to the scale of
  its output (`compare_layers`)."""
  rows = compare_layers(model, plain, variables, images, threads=threads)
  if not rows:
    return "the model has no nodes named after the plain network's layers"
  w = max(rows, key=lambda r: r["relative"])
  what = (
    f"layer {w['layer']} ({w['type']}: {plain.layers[w['layer']]}) differs most, max |diff| "
    f"{w['max_abs_diff']:.3g} on outputs up to {w['scale']:.3g} (each layer run in ONNX "
    "Runtime on the plain network's own input to it)"
  )
  if w["relative"] <= tolerance:
    return (
      f"no layer differs by more than {tolerance:g} of its output's scale on its own: the "
      f"difference builds up across layers or lies outside them; {what}"
    )
  return what
