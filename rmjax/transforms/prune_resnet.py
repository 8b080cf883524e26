"""Network slimming of a ResNet with its residual connections in place: the baseline of Sec. 5.1.

A residual connection adds a block's input to its output, so both must keep their width; only
the channels *inside* a block can go (BasicBlock: conv1's outputs; Bottleneck: conv1's and
conv2's). The paper compares pruning through RM against exactly this, at the same threshold:

  >>> slim, slim_vars, report = prune_resnet(model, variables, threshold=5e-3)
  >>> slim.inner_widths            # per block, the inner convs' new widths
  >>> slim.apply(slim_vars, x, train=False)

The result is still a ResNet (fine-tune it, time it as one), and `rm_convert` of it equals
`prune(rm_convert(model, variables, keep_bn=True), threshold, inner_only=True)`: the plain-network
form of the same baseline. Like `prune`, it reads the BN scales on the host (values pick shapes),
so it does not run under `jax.jit`.
"""

from __future__ import annotations

import numpy as np

from rmjax.cost import count_params
from rmjax.models.resnet import BasicBlock, Bottleneck, ResNet
from rmjax.transforms.channels import (
  abs_scales,
  constant_input_shift,
  kept_channels,
  take,
  without_input_shift,
)
from rmjax.transforms.convert import check_variables


def prune_resnet(model: ResNet, variables, threshold: float, *, fold_constants: bool = True):
  """Removes every block-inner channel whose |BN scale| is below `threshold`.

  Inner conv k of a block (`conv{k+1}`) loses its output channel c, its BN `bn{k+1}` loses
  entry c (scale, bias, running mean and variance), and the next conv loses input channel c. A
  conv never loses all its channels: where every |scale| is below the threshold, the largest
  stays. Stems, shortcuts, block outputs and the classifier keep their widths.

  As in `prune`, a removed channel's constant output (its BN bias through the ReLU, exact where
  its scale is 0) is folded into the next conv's BN (`fold_constants`; False drops it, as
  vanilla network slimming does). With exactly-zero scales the result is exact for a
  Bottleneck's 1x1 conv3 and, for 3x3 consumers, away from the zero-padded border.

  Args:
    model: a `ResNet` (BasicBlock or Bottleneck blocks); an already slimmed one works too.
    variables: its `{"params", "batch_stats"}`; never modified, untouched arrays are shared.
    threshold: channels with |scale| < threshold go; >= 0 (0 changes nothing).
    fold_constants: fold the removed channels' constant outputs into the next conv's BN.

  Returns:
    `(slim_model, slim_variables, report)`: `slim_model` is `model` with `inner_widths` set;
    `report` has the threshold, `blocks` (`block`, `conv`, `channels_before`,
    `channels_after`, `removed`, `folded` per inner conv), `params_before` and `params_after`.

  Raises:
    ValueError: not a ResNet, a negative threshold, or variables that do not fit the model.
  """
  if not isinstance(model, ResNet):
    raise ValueError(
      f"prune_resnet slims ResNets (BasicBlock/Bottleneck blocks), not {type(model).__name__}; "
      "for other networks convert with rm_convert(..., keep_bn=True) and use prune()"
    )
  if not threshold >= 0:  # also refuses NaN
    raise ValueError(f"threshold must be >= 0, got {threshold}")
  check_variables(model, variables)
  params = dict(variables["params"])
  stats = dict(variables["batch_stats"])
  entries, inner_widths = [], []
  for block in model.layout():
    if not isinstance(block, BasicBlock | Bottleneck):
      continue
    p, s = dict(params[block.name]), dict(stats[block.name])
    widths = []
    for k in range(block.num_inner):
      conv, bn, consumer = f"conv{k + 1}", f"bn{k + 1}", f"conv{k + 2}"
      before = block.inner(k)
      keep = kept_channels(abs_scales(p[bn]["scale"]), threshold)
      removed = np.setdiff1d(np.arange(before), keep)
      # A flat channel outputs relu(bias): fold it into the consumer's BN (see `prune`).
      values = np.maximum(np.asarray(p[bn]["bias"], np.float64)[removed], 0.0)
      if fold_constants and np.any(values):
        shift = constant_input_shift(p[consumer]["kernel"], removed, values)
        s[f"bn{k + 2}"] = without_input_shift(s[f"bn{k + 2}"], shift)
      if keep.size < before:
        p[conv] = {"kernel": take(p[conv]["kernel"], keep, axis=3)}
        p[bn] = {name: take(v, keep) for name, v in p[bn].items()}
        s[bn] = {name: take(v, keep) for name, v in s[bn].items()}
        p[consumer] = {"kernel": take(p[consumer]["kernel"], keep, axis=2)}
      widths.append(int(keep.size))
      entries.append(
        {
          "block": block.name,
          "conv": conv,
          "channels_before": before,
          "channels_after": int(keep.size),
          "removed": [int(c) for c in removed],
          "folded": int(np.count_nonzero(values)) if fold_constants else 0,
        }
      )
    params[block.name], stats[block.name] = p, s
    inner_widths.append(tuple(widths))
  slim = model.clone(inner_widths=tuple(inner_widths))
  report = {
    "threshold": float(threshold),
    "blocks": entries,
    "params_before": count_params(variables["params"]),
    "params_after": count_params(params),
  }
  return slim, {**variables, "params": params, "batch_stats": stats}, report


__all__ = ["prune_resnet"]
