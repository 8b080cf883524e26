"""What tests import (nothing outside tests/ imports this module): random non-trivial variables
to check conversions with, jitted float32 logits at full precision, and damage to files on disk.

  >>> variables = random_variables(model, x, seed=1)     # BN statistics that are not identities
  >>> got, want = eval_logits(plain, plain_vars, x), eval_logits(model, variables, x)
  >>> flip_byte(array_data_files("PLAIN/variables")[0], 100)   # one bit of the weights' bytes
"""

import os

from rmjax.randomize import random_variables, randomize_batchnorm
from rmjax.verify import eval_logits, max_abs_difference

__all__ = [
  "array_data_files",
  "eval_logits",
  "flip_byte",
  "max_abs_difference",
  "random_variables",
  "randomize_batchnorm",
]


def flip_byte(path, offset: int) -> None:
  """Flips the lowest bit of the byte at `offset` of the file `path` (twice restores it)."""
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([byte ^ 0x01]))


def array_data_files(directory) -> list[str]:
  """The files holding an orbax checkpoint's array bytes (TensorStore OCDBT `.../d/<hash>`)
  below `directory`, largest last."""
  found = []
  for root, _, files in os.walk(directory):
    if os.path.basename(root) == "d":
      found += [os.path.join(root, name) for name in files]
  return sorted(found, key=os.path.getsize)
