"""Network slimming on a plain network (Sec. 4.2, Fig. 4, Sec. 5.1; Liu et al. 2017).

RM removes the residual connections that tie the widths of a ResNet's layers together, so every
conv of the plain network can lose output channels independently. The paper trains with an L1
penalty on the BN scales, converts to the fine-tuning form (`rm_convert(..., keep_bn=True)`:
conv without bias + BN) and removes the channels whose |BN scale| is below a threshold
("identical to vanilla Network slimming", Sec. 4.2):

  >>> plain, plain_vars = rm_convert(model, variables, keep_bn=True)
  >>> pruned, pruned_vars, report = prune(plain, plain_vars, threshold=5e-3)
  >>> report["params_before"], report["params_after"]

A channel is followed from the dense conv (groups 1) that produces it to the layer that consumes
it: through its BN and activation, pooling, and any depthwise convs (MobileNet), whose channel c
is a function of channel c alone. All of those lose the channel together; the consumer (the next
dense conv, or the Dense after GlobalAvgPool) loses the matching input channel.

Unlike the rest of `rmjax.transforms`, the architecture that comes out depends on array values
(the BN scales), so `prune` reads them on the host and cannot run under `jax.jit`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from rmjax.cost import count_params
from rmjax.models.plain import (
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
from rmjax.transforms.channels import (
  abs_scales,
  constant_input_shift,
  kept_channels,
  take,
  without_input_shift,
)


def _depthwise(layer) -> bool:
  """Channel c of the output depends on channel c of the input only."""
  return (
    isinstance(layer, Conv)
    and layer.groups > 1
    and layer.groups == layer.in_features == layer.out_features
  )


def _dense_conv(layer) -> bool:
  return isinstance(layer, Conv) and layer.groups == 1


@dataclasses.dataclass(frozen=True)
class _Group:
  """The channels a dense conv produces, followed to the layer that consumes them.

  `members`: the layers after `source` whose channel axis is these channels (BNs, PReLUs,
  depthwise convs); `consumer`: the Conv or Dense that reads them as input channels; once
  scored, `bns`: the BatchNorms among the members, `score`: each channel's importance."""

  source: int
  members: tuple[int, ...]
  consumer: int
  bns: tuple[int, ...] = ()
  score: np.ndarray | None = dataclasses.field(default=None, compare=False)


def _follow(layers, source: int) -> _Group | str:
  """The group of the dense conv `layers[source]`, or why its outputs cannot be pruned."""
  if source + 1 >= len(layers) or not isinstance(layers[source + 1], BatchNorm):
    # RepVGG-style blocks are re-parameterised into one biased conv even in the keep_bn form.
    return "no BatchNorm after it (a BN folded into its bias): no scale to rank channels by"
  members = []
  for j in range(source + 1, len(layers)):
    layer = layers[j]
    if isinstance(layer, BatchNorm | PReLU) or _depthwise(layer):
      members.append(j)
    elif isinstance(layer, ReLU | MaxPool | GlobalAvgPool):
      continue  # per-channel (or per-channel spatial) operations: channels pass through
    elif isinstance(layer, Dense) or _dense_conv(layer):
      return _Group(source, tuple(members), j)
    elif isinstance(layer, SqueezeExcite):
      return f"feeds the squeeze-and-excitation layer {j}, whose dense layers read its channels"
    else:
      return (
        f"feeds the grouped conv {j} (groups={layer.groups}): removing some of its input "
        "channels would leave groups of unequal size"
      )
  return "its outputs are the network's outputs"


def _check(plain: PlainNet, variables) -> None:
  """ValueError for a deploy-form network or variables that do not fit the layers."""
  layers = plain.layers
  if not any(
    isinstance(a, Conv) and isinstance(b, BatchNorm)
    for a, b in zip(layers, layers[1:], strict=False)
  ):
    raise ValueError(
      "prune needs the fine-tuning form, where each conv is followed by a BatchNorm whose "
      "scales rank its channels (network slimming, Sec. 4.2); this network has no Conv + "
      "BatchNorm pair (deploy form: BN folded into conv biases). Convert with "
      "rm_convert(..., keep_bn=True) (convert.py --keep_bn)."
    )
  params, stats = variables.get("params", {}), variables.get("batch_stats", {})
  problems = []
  for i, layer in enumerate(layers):
    want = {}
    if isinstance(layer, Conv):
      k = layer.kernel_size
      want["params", "kernel"] = (k, k, layer.in_features // layer.groups, layer.out_features)
      if layer.use_bias:
        want["params", "bias"] = (layer.out_features,)
    elif isinstance(layer, BatchNorm):
      for collection, names in (("params", ("scale", "bias")), ("batch_stats", ("mean", "var"))):
        want.update({(collection, n): (layer.features,) for n in names})
    elif isinstance(layer, PReLU):
      want["params", "slope"] = (layer.features,)
    elif isinstance(layer, Dense):
      want["params", "kernel"] = (layer.in_features, layer.out_features)
      want["params", "bias"] = (layer.out_features,)
    for (collection, name), shape in want.items():
      entry = (params if collection == "params" else stats).get(f"layers_{i}", {})
      got = tuple(np.shape(entry[name])) if name in entry else None
      if got != shape:
        where = f"{collection}/layers_{i}/{name}"
        problems.append(f"missing {where}" if got is None else f"{where} is {got}, not {shape}")
  if problems:
    raise ValueError(f"variables do not match the layers: {'; '.join(problems[:8])}")


def prune(
  plain: PlainNet,
  variables,
  threshold: float,
  *,
  inner_only: bool = False,
  fold_constants: bool = True,
):
  """Network slimming (Sec. 4.2): removes every channel whose |BN scale| is below `threshold`.

  `plain` must be the fine-tuning form (`rm_convert(model, variables, keep_bn=True)`): a dense
  conv (groups 1) followed by a BatchNorm has its channels ranked by that BN's |scale| —
  except where the conv merges a shortcut (`Conv.merged`), whose outputs also carry the
  residual stream: there a channel ranks by the larger of its BN's |scale| and the importance
  of the reserved channel its identity shortcut adds, and the outputs of a projection merge
  are kept (train with `shortcut_bn=True` so that the reserved channels are scored). A
  channel that then passes through depthwise convs (MobileNet) is one channel of all of them,
  removed as a whole; its importance is the smallest |scale| among the BNs on its way, as any
  one of them near zero silences it. Removing channel c takes it out of the conv's kernel, the
  BNs (scale, bias, mean, var), PReLU slopes and depthwise kernels on the way, and the input
  axis of the consumer: the next dense conv's kernel, or the Dense row after GlobalAvgPool.
  `BatchNorm.reserved`, `PReLU.clipped` (which count trailing and leading channels) and the
  depthwise convs' `groups` shrink with the channels they lose.

  Not pruned, and listed in `report["skipped"]` with the reason: convs without a BN after them
  (a re-parameterised RepVGG stem keeps only a bias), grouped convs (1 < groups, not
  depthwise) and the convs that feed them, since removing channels would leave groups of
  unequal size; and a conv whose outputs are the network's outputs.

  A layer never loses all its channels: where every channel is below the threshold, the one
  with the largest |scale| (in a depthwise chain: the largest smallest |scale|) stays, so the
  network still computes something from its input.

  What a removed channel still fed its consumer is kept where it can be: a channel whose BN
  scale is (near) zero outputs a constant — the bias of that BN, through the layers up to the
  consumer — and with `fold_constants` that constant times the consumer's weights goes into
  the consumer's bias (or its BN's running mean). Vanilla network slimming drops it, which with
  trained biases can leave the pruned network at chance before fine-tuning.

  Exactness: where the removed channels' scales are exactly 0, the pruned network computes the
  same function as the original when the consumer is a 1x1 conv or the classifier, and away
  from the zero-padded border for a k x k consumer (the padding met zeros where the constant
  used to be). Without `fold_constants`, only where the constant itself is 0 (scale 0 and bias
  0, or bias <= 0 before a ReLU). `threshold=0` changes nothing.

  Args:
    plain: a PlainNet in the fine-tuning form.
    variables: its `{"params", "batch_stats"}`; never modified. Unchanged arrays are shared.
    threshold: channels with |scale| < threshold go; >= 0 (the paper uses 5e-4 to 5e-3).
    inner_only: the ResNet baseline of Sec. 5.1 — prune only what slimming can prune with the
      residual connections in place: the block-inner channels, i.e. the non-reserved channels
      of convs whose BN has reserved channels. The reserved copies (the shortcut) and every
      block output keep their width. The result is exactly the RM form of the pruned ResNet.
    fold_constants: fold the removed channels' constant outputs into their consumers (above);
      False: drop them, as vanilla network slimming does.

  Returns:
    `(pruned_plain, pruned_variables, report)`. `report` is a JSON-serialisable dict: the
    threshold; `layers`, one entry per prunable conv, also those that keep every channel
    (`layer`, its `bn`, `depthwise` convs, `consumer`, `channels_before`, `channels_after`,
    `removed` channel indices, `folded`: how many of them fed a non-zero constant into the
    consumer); `skipped`, `{"layer", "reason"}` per conv not pruned; `params_before`,
    `params_after`.

  Raises:
    ValueError: a negative threshold, a deploy-form network (convert with keep_bn=True), or
      variables that do not fit the layers.

  Example:
    >>> pruned, pruned_vars, report = prune(plain, plain_vars, threshold=1e-3)
    >>> [(e["layer"], e["channels_before"], e["channels_after"]) for e in report["layers"]]
    [(0, 16, 11), (3, 32, 20), ...]
  """
  if not threshold >= 0:  # also refuses NaN
    raise ValueError(f"threshold must be >= 0, got {threshold}")
  _check(plain, variables)
  layers = plain.layers
  out_keep: dict[int, np.ndarray] = {}  # layer -> kept output (= channel-axis) indices
  in_keep: dict[int, np.ndarray] = {}  # consumer -> kept input indices
  shifts: dict[int, np.ndarray] = {}  # consumer -> what its removed inputs added to its outputs
  scores: dict[int, np.ndarray] = {}  # consumer -> the importance of its input channels
  entries, skipped = [], []
  for i, layer in enumerate(layers):
    if not isinstance(layer, Conv) or _depthwise(layer):
      continue  # depthwise convs are pruned with the dense conv whose channels they carry
    group = _prunable_group(layers, variables, i, scores, inner_only)
    if isinstance(group, str):
      skipped.append({"layer": i, "reason": group})
      continue
    keep, entry, shift = _plan_conv(layers, variables, i, group, threshold, fold_constants)
    entries.append(entry)
    if shift is not None:
      shifts[group.consumer] = shift
    if keep.size < layer.out_features:
      for j in (i, *group.members):
        out_keep[j] = keep
      in_keep[group.consumer] = keep
  new_layers, params, stats = _apply(plain, _shifted(layers, variables, shifts), out_keep, in_keep)
  pruned_vars = {**variables, "params": params}
  if "batch_stats" in variables:
    pruned_vars["batch_stats"] = stats
  report = {
    "threshold": float(threshold),
    "layers": entries,
    "skipped": skipped,
    "params_before": count_params(variables["params"]),
    "params_after": count_params(params),
  }
  return PlainNet(new_layers), pruned_vars, report


def _prunable_group(layers, variables, i: int, scores: dict, inner_only: bool):
  """The channel group of conv `i` (the conv, its BNs and depthwise convs, its consumer) with
  `group.score`, the importance of each of its channels; or why it is not pruned (a str).
  Records the score in `scores` for the consumer, whose merge may rank by it."""
  layer = layers[i]
  if layer.groups > 1:
    return f"grouped conv (groups={layer.groups}): removing outputs would unbalance groups"
  group = _follow(layers, i)
  if isinstance(group, str):
    return group
  bns = [j for j in group.members if isinstance(layers[j], BatchNorm)]
  score = np.min([abs_scales(variables["params"][f"layers_{j}"]["scale"]) for j in bns], axis=0)
  if layer.merged:
    score = _with_shortcut(layer, score, scores.get(i))
  scores[group.consumer] = score
  if inner_only:
    reserved = layers[bns[0]].reserved
    if not reserved:
      return "inner_only: its outputs are a block's output (the residual stream)"
    score[-reserved:] = np.inf  # the shortcut's copies: a ResNet cannot narrow them
  return dataclasses.replace(group, bns=tuple(bns), score=score)


def _plan_conv(layers, variables, i: int, group, threshold: float, fold_constants: bool):
  """`(kept channels, report entry, consumer shift or None)` for conv `i` and its `group`."""
  keep = kept_channels(group.score, threshold)
  n = layers[i].out_features
  removed = np.setdiff1d(np.arange(n), keep)
  folded, shift = 0, None
  if fold_constants and removed.size:
    values = _constant_outputs(layers, variables, group, list(group.bns), removed)
    folded = int(np.count_nonzero(values))
    if folded:
      kernel = variables["params"][f"layers_{group.consumer}"]["kernel"]
      shift = constant_input_shift(kernel, removed, values)
  entry = {
    "layer": i,
    "bn": group.bns[0],
    "depthwise": [j for j in group.members if _depthwise(layers[j])],
    "consumer": group.consumer,
    "channels_before": n,
    "channels_after": int(keep.size),
    "removed": [int(c) for c in removed],
    "folded": folded,
  }
  return keep, entry, shift


def _with_shortcut(conv: Conv, score: np.ndarray, inputs: np.ndarray | None) -> np.ndarray:
  """The importance of a merging conv's outputs: they carry the shortcut too (Eq. 4), so a
  channel whose branch BN is near zero may still pass the residual stream. With an identity
  shortcut, output j adds input `in - merged + j`, a reserved channel whose importance its own
  BN gives (with `shortcut_bn`, the shortcut BN's scale): the channel goes only when both are
  small. A projection mixes every shortcut input into every output: those outputs stay."""
  if not conv.merged_identity or inputs is None:
    return np.full_like(score, np.inf)
  score = score.copy()
  score[: conv.merged] = np.maximum(score[: conv.merged], inputs[-conv.merged :])
  return score


def _constant_outputs(layers, variables, group: _Group, bns, removed) -> np.ndarray:
  """Per removed channel, the constant it feeds the consumer: its output with the BN of the
  smallest |scale| on its way taken as constant (its bias; exact at scale 0), then passed
  through the layers after that BN up to the consumer."""
  params, stats = variables["params"], variables.get("batch_stats", {})
  scales = np.stack([abs_scales(params[f"layers_{j}"]["scale"])[removed] for j in bns])
  start = np.asarray(bns)[np.argmin(scales, axis=0)]  # per removed channel: where it goes flat
  values = np.zeros(removed.size)
  for j in range(group.source + 1, group.consumer):
    layer, p = layers[j], params.get(f"layers_{j}", {})
    if isinstance(layer, BatchNorm):
      bias = np.asarray(p["bias"], np.float64)[removed]
      s = stats[f"layers_{j}"]
      sigma = np.sqrt(np.asarray(s["var"], np.float64)[removed] + layer.epsilon)
      mean = np.asarray(s["mean"], np.float64)[removed]
      affine = np.asarray(p["scale"], np.float64)[removed] * (values - mean) / sigma + bias
      values = np.where(start == j, bias, np.where(start < j, affine, values))
    elif isinstance(layer, ReLU):
      values = np.maximum(values, 0.0)
      if layer.max_value is not None:
        values = np.minimum(values, layer.max_value)
    elif isinstance(layer, PReLU):
      slope = np.asarray(p["slope"], np.float64)[removed]
      values = np.where(values >= 0, values, slope * values)
      if layer.max_value is not None:
        values = np.where(removed < layer.clipped, np.minimum(values, layer.max_value), values)
    elif _depthwise(layer):  # channel c times the sum of its taps (interior), plus its bias
      taps = np.asarray(p["kernel"], np.float64).sum(axis=(0, 1))[0, removed]
      values = values * taps + (np.asarray(p["bias"], np.float64)[removed] if "bias" in p else 0)
    # MaxPool and GlobalAvgPool leave a constant as it is.
  return values


def _shifted(layers, variables, shifts):
  """`variables` with each consumer's output shift added: to its bias, or (conv + BN) to the
  BN's input by lowering its running mean. Dense consumers always have a bias."""
  if not shifts:
    return variables
  params = dict(variables["params"])
  stats = dict(variables.get("batch_stats", {}))
  for i, shift in shifts.items():
    layer, name = layers[i], f"layers_{i}"
    if isinstance(layer, Dense) or layer.use_bias:
      p = dict(params[name])
      p["bias"] = jnp.asarray(np.asarray(p["bias"], np.float64) + shift, p["bias"].dtype)
      params[name] = p
    elif i + 1 < len(layers) and isinstance(layers[i + 1], BatchNorm):
      stats[f"layers_{i + 1}"] = without_input_shift(stats[f"layers_{i + 1}"], shift)
  return {**variables, "params": params, "batch_stats": stats}


def _apply(plain: PlainNet, variables, out_keep, in_keep):
  """New layer specs and variables with the kept channels; untouched layers share arrays."""
  params = dict(variables["params"])
  stats = dict(variables.get("batch_stats", {}))
  new_layers = []
  for i, layer in enumerate(plain.layers):
    name = f"layers_{i}"
    out, inp = out_keep.get(i), in_keep.get(i)
    if out is None and inp is None:
      new_layers.append(layer)
      continue
    p = dict(params[name])
    if isinstance(layer, Conv):
      # Dropped channels move the Dirac entries the spec records (structured execution).
      layer = layer.unstructured()
      if inp is not None:
        p["kernel"] = take(p["kernel"], inp, axis=2)
        layer = dataclasses.replace(layer, in_features=int(inp.size))
      if out is not None:
        p["kernel"] = take(p["kernel"], out, axis=3)
        if layer.use_bias:
          p["bias"] = take(p["bias"], out)
        width = int(out.size)
        if _depthwise(layer):
          layer = dataclasses.replace(layer, in_features=width, groups=width)
        layer = dataclasses.replace(layer, out_features=width)
    elif isinstance(layer, BatchNorm):
      p = {k: take(v, out) for k, v in p.items()}
      stats[name] = {k: take(v, out) for k, v in stats[name].items()}
      # Reserved channels are the trailing ones (Eq. 3): count the survivors among them.
      reserved = int(np.sum(out >= layer.features - layer.reserved))
      layer = dataclasses.replace(layer, features=int(out.size), reserved=reserved)
    elif isinstance(layer, PReLU):
      p["slope"] = take(p["slope"], out)
      # Clipped (ReLU6) channels are the leading ones: count the survivors among them.
      clipped = int(np.sum(out < layer.clipped))
      layer = dataclasses.replace(layer, features=int(out.size), clipped=clipped)
    elif isinstance(layer, Dense):
      p["kernel"] = take(p["kernel"], inp, axis=0)
      layer = dataclasses.replace(layer, in_features=int(inp.size))
    params[name] = p
    new_layers.append(layer)
  return tuple(new_layers), params, stats


__all__ = ["prune"]
