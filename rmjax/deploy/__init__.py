"""Plain networks as artefacts that run without rmjax, each checked against JAX before it is kept.

- `jax_formats`: a StableHLO file (`jax.export`) and a TensorFlow SavedModel (`jax2tf`).
- `onnx`: an ONNX model built from the layer table, verified in ONNX Runtime
  (`pip install 'rmjax[deploy]'`; imported only when an ONNX function is called);
  `onnx_structured`: the same model with RM's Dirac convs as copies and adds (format
  `onnx_structured`, `PLAIN.structured.onnx`: the faster one in ONNX Runtime for RM networks,
  and what `bench.py` times for a structured row).

The registry below is what `convert.py --export FMT` offers: every exporter has the signature
`(plain, variables, input_shape, path)`, every loader `path -> (images -> logits)`. Through the
registry every artefact gets a SHA-256 digest once written (`PATH.sha256` beside a file,
`PATH/SHA256SUMS` in a directory; `rmjax.integrity`), which its loader checks first: a new format
needs nothing of its own for that.

  >>> deploy.EXPORTERS["onnx"](plain, variables, (32, 32, 3), deploy.artefact_path(PLAIN, "onnx"))
"""

from __future__ import annotations

import functools
import os

from rmjax import integrity
from rmjax.deploy import jax_formats, onnx, onnx_structured


def _sealed(export):
  @functools.wraps(export)
  def write(plain, variables, input_shape, path, **kwargs):
    result = export(plain, variables, input_shape, path, **kwargs)
    integrity.seal(path)
    return result

  return write


def _checked(load):
  @functools.wraps(load)
  def read(path, **kwargs):
    integrity.check(path)  # DigestError naming a damaged file; a warning if there is no digest
    return load(path, **kwargs)

  return read


FORMATS = ("stablehlo", "savedmodel", "onnx", "onnx_structured")
EXPORTERS = {
  "stablehlo": _sealed(jax_formats.export_stablehlo),
  "savedmodel": _sealed(jax_formats.export_savedmodel),
  "onnx": _sealed(onnx.export_onnx),
  "onnx_structured": _sealed(
    functools.partial(onnx.export_onnx, build=onnx_structured.to_structured_onnx)
  ),
}
LOADERS = {
  "stablehlo": _checked(jax_formats.load_stablehlo),
  "savedmodel": _checked(jax_formats.load_savedmodel),
  "onnx": _checked(onnx.load_onnx),
  "onnx_structured": _checked(onnx.load_onnx),
}
# A format's file name after PLAIN, where it is not the format's name.
SUFFIXES = {"onnx_structured": "structured.onnx"}


def artefact_path(plain_dir: str, fmt: str) -> str:
  """Where `convert.py --export FMT` puts an artefact: next to PLAIN, `PLAIN.stablehlo`,
  `PLAIN.onnx`, `PLAIN.structured.onnx` (files) or `PLAIN.savedmodel` (a directory)."""
  return f"{os.path.abspath(plain_dir).rstrip(os.sep)}.{SUFFIXES.get(fmt, fmt)}"


__all__ = ["EXPORTERS", "FORMATS", "LOADERS", "artefact_path"]
