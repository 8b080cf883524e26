"""Is what rmjax reads back what it wrote? SHA-256 digests of its artefacts, and finite weights.

Every artefact rmjax writes carries a digest of its content in sha256sum's format, written once
the artefact is complete and checked before anything is read from it:

  a directory (PLAIN/, NAME.savedmodel/, a checkpoint step)  ->  DIR/SHA256SUMS
  a file (NAME.stablehlo, NAME.onnx, ...)                     ->  NAME.stablehlo.sha256 beside it

  >>> seal("/tmp/plain")        # after writing, before the rename that publishes it
  >>> check("/tmp/plain")       # before reading: a DigestError names a damaged or missing file
  $ cd /tmp/plain && sha256sum -c SHA256SUMS                     # the same check without rmjax

Files are hashed, not arrays: a digest holds whatever devices read the artefact back, costs one
more read of the files (SHA-256 runs at ~1.3 GB/s on one core), works for any format, and
refuses a damaged file before orbax/TensorStore decode it — which, for a flipped byte, often
succeeds with wrong values. Artefacts written before rmjax recorded digests load with a warning.

`check_finite` names the arrays holding NaN or inf, so that nothing is converted or evaluated
from them (a NaN would otherwise surface as "the conversion differs by nan").
"""

from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from rmjax import atomic

DIGEST_NAME = "SHA256SUMS"  # inside a directory artefact
SUFFIX = ".sha256"  # appended to a file artefact's name


class DigestError(ValueError):
  """An artefact whose content is not what was written: a damaged, missing or unreadable file."""


class NonFiniteError(ValueError):
  """Weights holding NaN or inf."""


def digest_file(path: str) -> str:
  """Where the digest of the file or directory `path` is (or would be) written."""
  path = os.path.abspath(path).rstrip(os.sep)
  return os.path.join(path, DIGEST_NAME) if os.path.isdir(path) else path + SUFFIX


def seal(path: str) -> str:
  """Writes the SHA-256 digest of the file or directory `path` (every file below it, by
  relative path); returns the digest file's path. Call it once `path` is complete."""
  path = os.path.abspath(path).rstrip(os.sep)
  if os.path.isdir(path):
    entries = [(_sha256(os.path.join(path, name)), name) for name in _files(path)]
  else:
    entries = [(_sha256(path), os.path.basename(path))]
  target = digest_file(path)
  # The `sha256sum -c` format: "<hex>  <path relative to the digest file>".
  atomic.write_text(target, "".join(f"{digest}  {name}\n" for digest, name in entries))
  return target


def check(path: str) -> bool:
  """Checks the file or directory `path` against its digest: True when it matches, False (and a
  warning) when it has none (written before rmjax recorded digests, or by another tool).

  Raises:
    DigestError: a file differs from its digest, is missing, or the digest file is damaged.
  """
  path = os.path.abspath(path).rstrip(os.sep)
  target = digest_file(path)
  if not os.path.exists(target):
    logging.warning(
      "%s has no SHA-256 digest (%s), so its content cannot be verified: it was written before "
      "rmjax recorded digests, or not by rmjax",
      path,
      os.path.basename(target),
    )
    return False
  expected = _read_digest(target)
  root = path if os.path.isdir(path) else os.path.dirname(path)
  if not os.path.isdir(path):  # a sidecar names its file; the file may have been renamed since
    expected = {os.path.basename(path): next(iter(expected.values()))} if expected else {}
  bad = []
  for name, digest in expected.items():
    file = os.path.join(root, name)
    try:
      if _sha256(file) != digest:
        bad.append(f"{file} is damaged: its SHA-256 is not the one {target} recorded")
    except FileNotFoundError:
      bad.append(f"{file}, listed in {target}, is missing")
    except OSError as e:
      bad.append(f"{file} cannot be read ({e.strerror or e})")
  if bad:
    more = f" (and {len(bad) - 1} more file(s))" if len(bad) > 1 else ""
    raise DigestError(bad[0] + more)
  return True


def _read_digest(target: str) -> dict[str, str]:
  try:
    with open(target) as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DigestError(f"the digest file {target} cannot be read: {e}") from None
  expected = {}
  for line in lines:
    digest, sep, name = line.partition("  ")
    if not sep or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
      raise DigestError(f"the digest file {target} is damaged (line {line[:80]!r})")
    expected[name] = digest
  if not expected:
    raise DigestError(f"the digest file {target} is empty")
  return expected


def _files(root: str) -> list[str]:
  """Every file below `root` but its digest, as sorted relative paths with '/' separators."""
  names = []
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in files:
      rel = os.path.relpath(os.path.join(folder, name), root)
      if rel != DIGEST_NAME:
        names.append(rel.replace(os.sep, "/"))
  return sorted(names)


def _sha256(file: str) -> str:
  with open(file, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


# --- finite weights ---------------------------------------------------------------------------


def nonfinite_arrays(variables) -> list[str]:
  """The arrays of `variables` (nested dicts) holding NaN or inf, as "path (n NaN of size)"."""
  found = []
  for path, leaf in traverse_util.flatten_dict(variables, sep="/").items():
    array = np.asarray(jax.device_get(leaf))
    if not jnp.issubdtype(array.dtype, jnp.inexact) or np.isfinite(array).all():
      continue
    counts = {"NaN": int(np.isnan(array).sum()), "inf": int(np.isinf(array).sum())}
    what = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    found.append(f"{path} ({what} of {array.size})")
  return found


def check_finite(variables, what: str) -> None:
  """Raises NonFiniteError naming the arrays of `variables` with NaN or inf; `what` names them."""
  bad = nonfinite_arrays(variables)
  if bad:
    shown = ", ".join(bad[:5]) + (f", and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise NonFiniteError(
      f"{what} holds non-finite weights (NaN or inf) in {len(bad)} array(s): {shown}. Nothing "
      "computed from them means anything; use an earlier checkpoint or the original weights"
    )
