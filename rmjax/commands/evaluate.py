"""Top-1/top-5 of training checkpoints and plain networks on the same test split.

  python evaluate.py workdirs/demo workdirs/demo/plain    # the original and its conversion

Each PATH is a training workdir (its latest checkpoint), a step directory
`<workdir>/checkpoints/<step>`, or a PLAIN directory written by convert.py. The dataset is the
one the run was trained on (recorded in config.json / plain.json) unless --dataset says another.
"""

import sys

from absl import flags

from rmjax import cli, evaluation, run

_DATASET = flags.DEFINE_string("dataset", None, "Evaluate on this dataset's test split.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir.")


def _main(argv):
  paths = argv[1:]
  if not paths:
    print("usage: python evaluate.py PATH [PATH ...] [flags]   (--help)", file=sys.stderr)
    return 2
  cli.quiet_libraries()  # orbax is chatty; rmjax's progress lines and the report stay
  try:
    rows = evaluation.evaluate_paths(
      paths, dataset=_DATASET.value, batch_size=_BATCH_SIZE.value, data_dir=_DATA_DIR.value
    )
  except run.RunError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(evaluation.format_eval_table(rows))
  return 0


def main() -> None:
  """The `rmjax-evaluate` console script and `python evaluate.py`."""
  cli.run(_main, __doc__)
