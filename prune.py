"""Prune a plain network by network slimming: `python prune.py PLAIN PRUNED --threshold T`.

PLAIN is a directory written by `convert.py --keep_bn` (the fine-tuning form: conv + BN + ReLU);
every channel whose |BN scale| is below T is removed (Sec. 4.2, Fig. 4; `rmjax.transforms.prune`
explains which layers can lose channels and which are skipped). PRUNED is a new PLAIN directory
with the same input shape and provenance plus the threshold, written atomically; fine-tune it
with `train.py --config.init_from=PRUNED` (the paper fine-tunes after pruning).

The paper trains with an L1 penalty on the BN scales and picks T in [5e-4, 5e-3] (Sec. 5.1).

  python convert.py workdirs/slim workdirs/slim/plain --keep_bn
  python prune.py workdirs/slim/plain workdirs/slim/pruned --threshold=5e-3
"""

import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from rmjax import plain_io, transforms
from rmjax.cost import count_macs

_THRESHOLD = flags.DEFINE_float(
  "threshold",
  None,
  "Remove the channels whose |BN scale| is below this (>= 0; 0 changes nothing).",
  required=True,
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing PRUNED directory.")
_INNER_ONLY = flags.DEFINE_bool(
  "inner_only",
  False,
  "The ResNet baseline (Sec. 5.1): prune only block-inner channels, keeping the shortcut's "
  "copies and every block output, as slimming a ResNet with its residual connections must.",
)


def _row(name, channels, params, macs):
  return f"{name:<28}{channels:>14}{params:>14}{macs:>18}"


def format_report(plain, report, macs_before, macs_after) -> str:
  """The per-layer channel table, the skipped layers and the totals."""
  lines = [_row("layer", "channels", "params", "FLOPs (MACs)")]
  for e in report["layers"]:
    if e["channels_after"] < e["channels_before"]:
      name = f"({e['layer']}) {type(plain.layers[e['layer']]).__name__}"
      if e["depthwise"]:
        name += f" + {len(e['depthwise'])} depthwise"
      lines.append(_row(name, f"{e['channels_before']} -> {e['channels_after']}", "", ""))
  unchanged = sum(e["channels_after"] == e["channels_before"] for e in report["layers"])
  lines.append(f"({unchanged} of {len(report['layers'])} prunable convs keep all channels)")
  for s in report["skipped"]:
    conv = plain.layers[s["layer"]]
    lines.append(
      f"skipped ({s['layer']}) Conv({conv.in_features} -> {conv.out_features}): {s['reason']}"
    )
  lines += [
    "",
    _row("before", "", f"{report['params_before']:,}", f"{macs_before:,}"),
    _row("after", "", f"{report['params_after']:,}", f"{macs_after:,}"),
  ]
  return "\n".join(lines)


def run(
  plain_dir: str, pruned_dir: str, threshold: float, overwrite: bool, inner_only: bool = False
) -> str:
  """Loads, prunes and writes; returns the report text. Raises ValueError / OSError."""
  if not threshold >= 0:
    raise ValueError(f"--threshold must be >= 0, got {threshold}")
  pruned_dir = os.path.abspath(pruned_dir)
  if os.path.exists(pruned_dir) and not overwrite:  # before the slow part
    raise ValueError(f"{pruned_dir} already exists; pass --overwrite to replace it")
  arch = plain_io.read_arch(os.path.abspath(plain_dir))
  plain, variables = plain_io.load_plain(plain_dir)
  pruned, pruned_vars, report = transforms.prune(plain, variables, threshold, inner_only=inner_only)
  x = jax.ShapeDtypeStruct((1, *arch["input_shape"]), jnp.float32)
  text = format_report(
    plain,
    report,
    count_macs(plain.apply, variables, x),
    count_macs(pruned.apply, pruned_vars, x),
  )
  source = {**arch.get("source", {}), "pruned_from": os.path.abspath(plain_dir)}
  source["prune_threshold"] = float(threshold)
  plain_io.save_plain(
    pruned_dir,
    pruned,
    pruned_vars,
    input_shape=tuple(arch["input_shape"]),
    source=source,
    overwrite=overwrite,
  )
  return text


def main(argv):
  if len(argv) != 3:
    print(
      "usage: python prune.py PLAIN PRUNED --threshold=T [--overwrite]   (python prune.py --help)",
      file=sys.stderr,
    )
    return 2
  _, plain_dir, pruned_dir = argv
  logging.set_verbosity(logging.WARNING)  # orbax is chatty; the table below is the output
  try:
    text = run(plain_dir, pruned_dir, _THRESHOLD.value, _OVERWRITE.value, _INNER_ONLY.value)
  except (ValueError, OSError) as e:  # PlainFormatError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(text)
  print(f"wrote {os.path.abspath(pruned_dir)} (threshold {_THRESHOLD.value:g})")
  return 0


if __name__ == "__main__":
  app.run(main)
