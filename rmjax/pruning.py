"""A PLAIN directory pruned into another (what `python prune.py PLAIN PRUNED` does), and its report.

  >>> print(prune_plain_dir("workdirs/slim/plain", "workdirs/slim/pruned", 5e-3, overwrite=False))

Network slimming of the plain network (Sec. 4.2, Fig. 4): every channel whose |BN scale| is below
the threshold goes (`rmjax.transforms.prune` says which layers can lose channels); the result keeps
the input shape and provenance of its source, plus the threshold, and is written atomically.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from rmjax import plain_io, transforms
from rmjax.cost import count_macs


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


def prune_plain_dir(
  plain_dir: str, pruned_dir: str, threshold: float, *, overwrite: bool, inner_only: bool = False
) -> str:
  """Loads the PLAIN directory `plain_dir` (kept-BN form), prunes it at `threshold`
  (`transforms.prune`) and writes `pruned_dir` with the same input shape and provenance plus
  the threshold; returns the report text. Raises ValueError (PlainFormatError) / OSError."""
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
