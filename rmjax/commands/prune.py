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

from absl import flags, logging

from rmjax import cli, pruning

_THRESHOLD = flags.DEFINE_float(
  "threshold",
  None,
  "Remove the channels whose |BN scale| is below this (>= 0; 0 changes nothing).",
  required=True,
)
_OVERWRITE = cli.define_overwrite("PRUNED", __name__)
_INNER_ONLY = flags.DEFINE_bool(
  "inner_only",
  False,
  "The ResNet baseline (Sec. 5.1): prune only block-inner channels, keeping the shortcut's "
  "copies and every block output, as slimming a ResNet with its residual connections must.",
)


def _main(argv):
  if len(argv) != 3:
    print(
      "usage: python prune.py PLAIN PRUNED --threshold=T [--overwrite]   (python prune.py --help)",
      file=sys.stderr,
    )
    return 2
  _, plain_dir, pruned_dir = argv
  logging.set_verbosity(logging.WARNING)  # orbax is chatty; the table below is the output
  try:
    text = pruning.prune_plain_dir(
      plain_dir,
      pruned_dir,
      _THRESHOLD.value,
      overwrite=_OVERWRITE.value,
      inner_only=_INNER_ONLY.value,
    )
  except (ValueError, OSError) as e:  # PlainFormatError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(text)
  print(f"wrote {os.path.abspath(pruned_dir)} (threshold {_THRESHOLD.value:g})")
  return 0


def main() -> None:
  """The `rmjax-prune` console script and `python prune.py`."""
  cli.run(_main, __doc__)
