"""How far a plain network's logits are from its source's at each matmul precision
(`bench.py --precision_check`).

Users compare the two in jax's default precision. On a GPU that runs float32 convolutions and
matmuls in TF32 (10-bit mantissa), so two different programs computing the same function —
a residual network and its plain form — differ by TF32 round-off, far more than float32's;
`jax.default_matmul_precision("highest")` computes in full float32 (what `convert.py` and the
tests verify with). Each row: a plain network (in its mode), the max |logit| of its source, and
the max |logit difference| at each precision, on the same batch.

  >>> rows = logit_differences(suites.build(["tiny"]), batch=8)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import jax
import numpy as np

from rmjax.bench.measure import images, input_dtype, log
from rmjax.bench.suites import Network

# "default": no context (the platform's default precision); the others name a
# `jax.default_matmul_precision`.
PRECISIONS = ("default", "highest")


def _precision(name: str):
  return contextlib.nullcontext() if name == "default" else jax.default_matmul_precision(name)


def logit_differences(
  networks: Sequence[Network],
  *,
  batch: int,
  precisions: Sequence[str] = PRECISIONS,
  progress: Callable[[str], None] = log,
  on_row: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
  """A row per network with a reference (the plain ones): `max_abs_logit` (its reference's,
  at the first precision) and `max_abs_logit_diff_<precision>` for each of `precisions`, on
  the benchmark's images. `on_row(rows so far)` after each row."""
  rows = []
  references: dict[tuple[int, str], np.ndarray] = {}  # by id() of the reference, precision
  for net in networks:
    ref = net.reference
    if ref is None:
      continue
    x = images(batch, net.image_size).astype(input_dtype(net))
    row = {"network": net.name, "group": net.group, "mode": net.mode, "batch_size": batch}
    for name in precisions:
      with _precision(name):
        if (id(ref), name) not in references:
          references[id(ref), name] = np.asarray(jax.jit(ref.apply)(ref.variables, x), np.float32)
        logits = np.asarray(jax.jit(net.apply)(net.variables, x), np.float32)
      want = references[id(ref), name]
      row.setdefault("max_abs_logit", float(np.max(np.abs(want))))
      row[f"max_abs_logit_diff_{name}"] = float(np.max(np.abs(logits - want)))
    rows.append(row)
    on_row(rows)
    diffs = ", ".join(f"{p} {row[f'max_abs_logit_diff_{p}']:.1e}" for p in precisions)
    progress(f"[precision {len(rows)}] {net.name}: max |logit| {row['max_abs_logit']:.1f}, {diffs}")
  return rows
