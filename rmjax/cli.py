"""What the absl entry points that take `--config` share (train.py, slim.py)."""

from __future__ import annotations

import os
import sys

from absl import app


def default_workdir(config_path: str) -> str:
  """`workdirs/<config file name>` for `--config configs/NAME.py[:args]`."""
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("workdirs", name)


def parse_flags(argv):
  """absl's parsing, with a one-line error for a `--config.KEY` the config does not have
  (ml_collections raises AttributeError/KeyError from deep inside the flag parser)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    print(
      f"error: the config has no key {key!r} to override: --config.KEY can only set keys that "
      "the config file defines (model arguments go under model_kwargs; add new ones to the "
      "config file first)",
      file=sys.stderr,
    )
    sys.exit(2)
