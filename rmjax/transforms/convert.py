"""Whole-network conversion: walk a model's layout, one converter per block type.

A model that can be converted describes itself as `model.layout()`: a tuple of unbound Flax
block modules, each owning the variables under its name. A converter turns one block (its
fields are static architecture) and its variables into plain layers. Adding an architecture
means registering converters for its block types; nothing here changes:

  >>> @register_converter(MyBlock)
  ... def convert_my_block(block, variables, options) -> list[Emitted]: ...
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from rmjax.models.features import tap_indices
from rmjax.models.plain import SAME, BatchNorm, Conv, Layer, PlainNet
from rmjax.transforms.batchnorm import fold_batchnorm
from rmjax.transforms.fuse import fuse_pointwise


@dataclasses.dataclass(frozen=True)
class Options:
  """What every converter is told. See `rm_convert`."""

  keep_bn: bool = False
  dense_reserve: bool = False


@dataclasses.dataclass(frozen=True)
class Emitted:
  """One plain layer with its variables (`None` where it has none)."""

  layer: Layer
  params: Mapping | None = None
  batch_stats: Mapping | None = None


Converter = Callable[[nn.Module, Mapping, Options], list[Emitted]]
_CONVERTERS: dict[type, Converter] = {}


def register_converter(block_type: type) -> Callable[[Converter], Converter]:
  """Registers the converter for blocks of `block_type` (a Flax module class)."""

  def wrap(fn: Converter) -> Converter:
    if block_type in _CONVERTERS:
      raise ValueError(f"a converter for {block_type.__name__} is already registered")
    _CONVERTERS[block_type] = fn
    return fn

  return wrap


def convertible_blocks() -> list[str]:
  return sorted(t.__name__ for t in _CONVERTERS)


# --- helpers for converters ---------------------------------------------------------------


def batchnorm_of(variables, bn: str):
  """The BN `bn` of a block as `{"scale", "bias", "mean", "var"}` (params + batch_stats)."""
  return {**variables["params"][bn], **variables["batch_stats"][bn]}


def folded_conv(variables, conv: str, bn: str, *, epsilon: float):
  """`(kernel, bias)` of the conv `conv` with the BN `bn` folded in."""
  kernel = variables["params"][conv]["kernel"]
  return fold_batchnorm(kernel, batchnorm_of(variables, bn), epsilon=epsilon)


def conv_layer(variables, conv: str, bn: str, options: Options, *, epsilon: float):
  """The conv `conv` and BN `bn` of a block as an RM conv layer dict (see `transforms.rm`)."""
  if options.keep_bn:
    return {"kernel": variables["params"][conv]["kernel"], "bn": batchnorm_of(variables, bn)}
  kernel, bias = folded_conv(variables, conv, bn, epsilon=epsilon)
  return {"kernel": kernel, "bias": bias}


def emit_conv(
  layer,
  *,
  stride: int,
  padding: int | tuple[int, int] | str,
  groups: int = 1,
  epsilon: float = 1e-5,
  **structure,
):
  """Plain layers for an RM conv layer dict: Conv with bias, or Conv without bias + BatchNorm.

  `padding`: as `Conv.padding` takes it, `"same"` (TensorFlow's, from the input's size) too.
  `structure`: where the kernel is Dirac structure (`Conv.reserved`, `carried`, `merged`,
  `merged_identity`), recorded for structured execution (`rmjax.models.structured`).

  Raises:
    ValueError: Dirac structure in a strided conv padded "same". Its centre tap reads input
      `stride * i + k // 2 - low`, the strided 1x1 sampling (`stride * i`) a reserved or merged
      shortcut stands for (Eq. 2, 4; Appendix A.1 (b)) only where `low == k // 2`; under "same"
      `low` depends on the input's size (stride-2 3x3: 1 on odd sizes, 0 on even ones), so no
      kernel is exact at every size. (At stride 1, "same" is `k // 2` at every size.)
  """
  if padding == SAME and stride > 1 and any(structure.get(k) for k in ("reserved", "merged")):
    raise ValueError(
      f"a stride-{stride} conv padded {SAME!r} (TensorFlow's) cannot carry Dirac channels: its "
      "centre tap reads a different input pixel on even and odd input sizes"
    )
  kernel = layer["kernel"]
  spec = Conv(
    in_features=kernel.shape[2] * groups,
    out_features=kernel.shape[3],
    kernel_size=kernel.shape[0],
    stride=stride,
    padding=padding,
    groups=groups,
    use_bias="bias" in layer,
    **structure,
  )
  if "bn" not in layer:
    return [Emitted(spec, {"kernel": kernel, "bias": layer["bias"]})]
  bn = layer["bn"]
  return [
    Emitted(spec, {"kernel": kernel}),
    Emitted(
      BatchNorm(kernel.shape[3], epsilon, reserved=layer.get("reserved", 0)),
      {"scale": bn["scale"], "bias": bn["bias"]},
      {"mean": bn["mean"], "var": bn["var"]},
    ),
  ]


# --- fusion (Sec. 4.4) -----------------------------------------------------------------------


def _read_conv(emitted: list[Emitted], i: int):
  """The conv at `emitted[i]` (with the BN right after it, if any) as `(layer dict, spec, n,
  epsilon)`, n being how many entries it spans; None where `emitted[i]` is not a conv."""
  spec = emitted[i].layer
  if not isinstance(spec, Conv):
    return None
  params = emitted[i].params
  if spec.use_bias:
    return {"kernel": params["kernel"], "bias": params["bias"]}, spec, 1, 1e-5
  if i + 1 < len(emitted) and isinstance(emitted[i + 1].layer, BatchNorm):
    bn_spec = emitted[i + 1].layer
    bn = {**emitted[i + 1].params, **emitted[i + 1].batch_stats}
    layer = {"kernel": params["kernel"], "bn": bn, "reserved": bn_spec.reserved}
    return layer, spec, 2, bn_spec.epsilon
  zeros = jnp.zeros((spec.out_features,), params["kernel"].dtype)
  return {"kernel": params["kernel"], "bias": zeros}, spec, 1, 1e-5


def _pointwise(spec: Conv) -> bool:
  return spec.kernel_size == 1 and spec.padding == 0 and spec.groups == 1


def fuse_consecutive_pointwise(emitted: list[Emitted]) -> list[Emitted]:
  """Eq. 5 over a layer sequence: every 1x1 conv (+ BN) directly followed by another 1x1 conv
  (+ BN), with no activation between them, becomes one 1x1 conv (+ BN) — after RM this turns
  MobileNetV2's project/expand pairs into MobileNetV1's pointwise convs (Fig. 6)."""
  out = list(emitted)
  i = 0
  while i < len(out):
    first = _read_conv(out, i)
    second = _read_conv(out, i + first[2]) if first and i + first[2] < len(out) else None
    if first is None or second is None or not (_pointwise(first[1]) and _pointwise(second[1])):
      i += 1
      continue
    fused = fuse_pointwise(first[0], second[0], epsilon=first[3])
    # A 1x1 conv's stride only subsamples, so two strides compose.
    stride = first[1].stride * second[1].stride
    out[i : i + first[2] + second[2]] = emit_conv(
      fused, stride=stride, padding=0, epsilon=second[3]
    )
    # Stay at i: the fused layer may fuse with the next one too.
  return out


def fold_plain_batchnorm(emitted: list[Emitted]) -> list[Emitted]:
  """The deploy form of a plain layer sequence: every BatchNorm right after a Conv is folded
  into it (conv with bias). Other layers are kept as they are."""
  out, i = [], 0
  while i < len(emitted):
    spec = emitted[i].layer
    nxt = emitted[i + 1].layer if i + 1 < len(emitted) else None
    if not (isinstance(spec, Conv) and isinstance(nxt, BatchNorm)):
      out.append(emitted[i])
      i += 1
      continue
    bn = {**emitted[i + 1].params, **emitted[i + 1].batch_stats}
    params = emitted[i].params
    kernel, bias = fold_batchnorm(
      params["kernel"], bn, epsilon=nxt.epsilon, bias=params.get("bias")
    )
    layer = {"kernel": kernel, "bias": bias}
    out += emit_conv(layer, stride=spec.stride, padding=spec.padding, groups=spec.groups)
    i += 2
  return out


def _plain_emitted(plain: PlainNet, variables) -> list[Emitted]:
  stats = variables.get("batch_stats", {})
  # A plain network given to rm_convert was fine-tuned or pruned: training fills in the Dirac
  # zeros its convs record, so that record goes.
  return [
    Emitted(
      layer.unstructured() if isinstance(layer, Conv) else layer,
      variables["params"].get(f"layers_{i}"),
      stats.get(f"layers_{i}"),
    )
    for i, layer in enumerate(plain.layers)
  ]


# --- validation -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _expected_shapes(
  model: nn.Module, in_channels: int, features: bool = False
) -> dict[str, jax.ShapeDtypeStruct]:
  # Parameter shapes do not depend on the spatial size; 32x32 survives a stride-32 network.
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  kwargs = {"features": True} if features else {}
  init = functools.partial(model.init, train=False, **kwargs)
  abstract = jax.eval_shape(init, jax.random.key(0), x)
  return traverse_util.flatten_dict(abstract, sep="/")


def _in_channels(model, params) -> int:
  """Input channels, read from the first kernel of the first block (3 if it is missing)."""
  if isinstance(model, PlainNet):
    first = next((x for x in model.layers if isinstance(x, Conv)), None)
    return first.in_features if first is not None else 3
  first = params.get(model.layout()[0].name, {}) if isinstance(params, Mapping) else {}
  flat = traverse_util.flatten_dict(first) if isinstance(first, Mapping) else {}
  kernels = [v for k, v in flat.items() if k[-1] == "kernel" and hasattr(v, "shape")]
  return kernels[0].shape[-2] if kernels and len(kernels[0].shape) == 4 else 3


def _is_variables(variables) -> bool:
  return isinstance(variables, Mapping) and isinstance(variables.get("params"), Mapping)


def check_variables(model: nn.Module, variables, *, features: bool = False) -> None:
  """Raises ValueError naming every path of `variables` that does not match `model` (with
  `features`, its backbone: `model.init(..., features=True)`, no head)."""
  if not _is_variables(variables):
    raise ValueError(
      "variables must be a dict with a 'params' collection (as returned by model.init), "
      f"got {type(variables).__name__}"
    )
  expected = _expected_shapes(model, _in_channels(model, variables["params"]), features)
  flat = traverse_util.flatten_dict(variables, keep_empty_nodes=True, sep="/")
  given = {k: v for k, v in flat.items() if v is not traverse_util.empty_node}
  given_prefixes = {p.rsplit("/", n)[0] for p in flat for n in range(p.count("/") + 1)}
  problems, reported = [], set()
  # `params` first: it is where a mismatch usually starts.
  for path, want in sorted(expected.items(), key=lambda kv: not kv[0].startswith("params/")):
    if path in given:
      if tuple(jnp.shape(given[path])) != tuple(want.shape):
        got = tuple(jnp.shape(given[path]))
        problems.append(f"{path} has shape {got}, expected {tuple(want.shape)}")
      continue
    # Name the outermost missing entry once (a whole missing block is one problem).
    parts = path.split("/")
    missing = next(
      "/".join(parts[:n])
      for n in range(1, len(parts) + 1)
      if "/".join(parts[:n]) not in given_prefixes
    )
    if missing in reported:
      continue
    reported.add(missing)
    if missing == path:
      problems.append(f"missing {path} (expected shape {tuple(want.shape)})")
    else:
      problems.append(f"missing {missing} (expected, among others, {path} {tuple(want.shape)})")
  problems += [f"unexpected {path}" for path in given if path not in expected]
  if problems:
    shown = "\n  ".join(problems[:12])
    more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
    raise ValueError(
      f"variables do not match {type(model).__name__} ({len(problems)} problem(s)):\n  "
      f"{shown}{more}"
    )


# --- the walker -----------------------------------------------------------------------------


def _block_variables(variables, name: str):
  return {
    "params": variables["params"].get(name, {}),
    "batch_stats": variables.get("batch_stats", {}).get(name, {}),
  }


def _between_taps(fn, emitted: list[Emitted], taps: tuple[int, ...]):
  """`fn` (a pass over a layer sequence, e.g. fusion) applied to the runs of layers between
  taps, so that it never merges a tapped layer's output away: `(layers, where the taps are)`."""
  out, moved, start = [], [], 0
  for tap in taps:
    out += fn(emitted[start : tap + 1])
    moved.append(len(out) - 1)
    start = tap + 1
  return out + fn(emitted[start:]), tuple(moved)


def _headless(layout, taps: tuple[int, ...], variables) -> bool:
  """Whether `variables` hold a backbone alone: none of the blocks after the last tap."""
  trailing = {block.name for block in layout[taps[-1] + 1 :]}
  if not trailing or not _is_variables(variables):
    return False
  given = set(variables["params"]) | set(variables.get("batch_stats", {}))
  return not trailing & given


def rm_convert(
  model: nn.Module,
  variables,
  *,
  keep_bn: bool = False,
  dense_reserve: bool = False,
  fuse: bool = True,
  features: bool = False,
):
  """Removes every residual connection of `model`: returns `(plain_model, plain_variables)`.

  The result is a `PlainNet` (a flat sequence of conv / BN / ReLU / pool / dense layers) that
  computes the same logits as `model.apply(variables, x, train=False)`.

  Args:
    model: a model with a `layout()` whose block types all have converters (e.g. any ResNet),
      or a `PlainNet` (e.g. fine-tuned from a converted network): its BNs are folded for the
      deploy form and kept with `keep_bn`.
    variables: its `{"params", "batch_stats"}`. Never modified.
    keep_bn: False — deploy form: every BN folded into conv biases, layers are conv + ReLU.
      True — fine-tuning form (Appendix A.2): conv without bias + BN + ReLU, reserved channels'
      BN set to identity by Eq. 3.
    dense_reserve: carry reserved channels through a bottleneck's 3x3 conv with a dense kernel,
      as the published PyTorch code does (ResNet-50: 275M parameters), instead of Dirac groups.
    fuse: fuse consecutive 1x1 convs that RM leaves without an activation between them (Eq. 5;
      MobileNetV2 -> MobileNetV1, Fig. 6). False stops at the unfused "RMNetV1". Networks
      without such pairs (ResNets) are unaffected.
    features: backbone mode (`rmjax.models.features`): the plain network's `taps` are the
      layers whose outputs are the model's feature maps (`model.feature_taps()`), so that
      `plain.apply(v, x, features=True) == model.apply(variables, x, features=True)`. Each
      tap is the last layer of a tapped block, whose output is exactly the block's (the
      converters reserve a block's input in the next block's first conv); fusion does not
      cross a tap (MobileNetV2, bottleneck pre-activation ResNets: those 1x1 pairs stay two
      convs). Variables without the blocks after the last tap (a backbone initialised with
      `features=True`: no head) give a plain network that ends at the last tap. A `PlainNet`
      keeps its own taps either way.

  Raises:
    ValueError: the model has no converter, or `variables` does not match it (names each path).

  Example:
    >>> plain, plain_vars = rm_convert(model, variables)
    >>> plain.apply(plain_vars, x)            # == model.apply(variables, x, train=False)
    >>> print(plain)                          # the layer table
    >>> jax.jit(rm_convert, static_argnums=0)(model, variables)   # same result, jitted
  """
  if isinstance(model, PlainNet):
    # Already plain (a fine-tuned or pruned network): the deploy form folds its BNs.
    check_variables(model, variables)
    emitted, taps = _plain_emitted(model, variables), model.taps
    if not keep_bn:
      emitted, taps = _between_taps(fold_plain_batchnorm, emitted, taps)
    if fuse:
      emitted, taps = _between_taps(fuse_consecutive_pointwise, emitted, taps)
    return assemble(emitted, taps)
  layout_fn = getattr(model, "layout", None)
  if layout_fn is None:
    raise ValueError(
      f"rm_convert has no converter for {type(model).__name__}: a convertible model has a "
      f"layout() of blocks with converters (known blocks: {', '.join(convertible_blocks())})"
    )
  layout = layout_fn()
  for block in layout:
    if type(block) not in _CONVERTERS:
      raise ValueError(
        f"rm_convert has no converter for block {block.name!r} of type {type(block).__name__}"
        f" in {type(model).__name__}; known blocks: {', '.join(convertible_blocks())}"
      )
  block_taps = tap_indices(layout, model.feature_taps()) if features else ()
  headless = bool(block_taps) and _headless(layout, block_taps, variables)
  check_variables(model, variables, features=headless)
  if headless:
    layout = layout[: block_taps[-1] + 1]
  options = Options(keep_bn=keep_bn, dense_reserve=dense_reserve)
  emitted: list[Emitted] = []
  taps = []
  for i, block in enumerate(layout):
    emitted += _CONVERTERS[type(block)](block, _block_variables(variables, block.name), options)
    if i in block_taps:
      taps.append(len(emitted) - 1)
  taps = tuple(taps)
  if fuse:
    emitted, taps = _between_taps(fuse_consecutive_pointwise, emitted, taps)
  return assemble(emitted, taps)


# `rm_convert` compiled, as every caller wants it: the architecture and the form options static,
# the variables traced — one XLA program per architecture and form (ResNet-50 in ~1 s).
rm_convert_jit = jax.jit(
  rm_convert, static_argnums=0, static_argnames=("keep_bn", "dense_reserve", "fuse", "features")
)


def assemble(emitted: list[Emitted], taps: tuple[int, ...] = ()):
  """`(PlainNet, variables)` from emitted layers; layer i's variables live under `layers_{i}`,
  the outputs of the layers at `taps` are its feature maps."""
  params, stats = {}, {}
  for i, e in enumerate(emitted):
    if e.params is not None:
      params[f"layers_{i}"] = dict(e.params)
    if e.batch_stats is not None:
      stats[f"layers_{i}"] = dict(e.batch_stats)
  plain_variables = {"params": params}
  if stats:
    plain_variables["batch_stats"] = stats
  return PlainNet(tuple(e.layer for e in emitted), taps=tuple(taps)), plain_variables


__all__ = [
  "Emitted",
  "Options",
  "assemble",
  "check_variables",
  "conv_layer",
  "convertible_blocks",
  "emit_conv",
  "folded_conv",
  "fold_plain_batchnorm",
  "fuse_consecutive_pointwise",
  "register_converter",
  "rm_convert",
]
