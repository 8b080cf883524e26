"""Plain networks as artefacts that run without rmjax, each checked against JAX before it is kept.

- `jax_formats`: a StableHLO file (`jax.export`) and a TensorFlow SavedModel (`jax2tf`).
- `onnx`: an ONNX model built from the layer table, verified in ONNX Runtime
  (`pip install 'rmjax[deploy]'`; imported only when an ONNX function is called).

The registry below is what `convert.py --export FMT` offers: every exporter has the signature
`(plain, variables, input_shape, path)`, every loader `path -> (images -> logits)`.

  >>> deploy.EXPORTERS["onnx"](plain, variables, (32, 32, 3), deploy.artefact_path(PLAIN, "onnx"))
"""

from __future__ import annotations

import os

from rmjax.deploy import jax_formats, onnx

FORMATS = ("stablehlo", "savedmodel", "onnx")
EXPORTERS = {
  "stablehlo": jax_formats.export_stablehlo,
  "savedmodel": jax_formats.export_savedmodel,
  "onnx": onnx.export_onnx,
}
LOADERS = {
  "stablehlo": jax_formats.load_stablehlo,
  "savedmodel": jax_formats.load_savedmodel,
  "onnx": onnx.load_onnx,
}


def artefact_path(plain_dir: str, fmt: str) -> str:
  """Where `convert.py --export FMT` puts an artefact: next to PLAIN, `PLAIN.stablehlo`,
  `PLAIN.onnx` (files) or `PLAIN.savedmodel` (a directory)."""
  return f"{os.path.abspath(plain_dir).rstrip(os.sep)}.{fmt}"


__all__ = ["EXPORTERS", "FORMATS", "LOADERS", "artefact_path"]
