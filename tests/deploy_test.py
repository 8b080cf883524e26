"""rmjax.deploy's registry: every format's artefact gets a digest when written and its loader
refuses the artefact once a byte of it changed, naming the file."""

import os

import chex
import jax
import numpy as np
import pytest

from rmjax import deploy, integrity
from rmjax.models.plain import Conv, Dense, GlobalAvgPool, PlainNet, ReLU
from rmjax.testing import flip_byte

SHAPE = (8, 8, 3)
PLAIN = PlainNet((Conv(3, 4, 3, padding=1), ReLU(), GlobalAvgPool(), Dense(4, 5)))


def largest_file(path):
  if os.path.isfile(path):
    return path
  files = [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
  return max((f for f in files if not f.endswith("SHA256SUMS")), key=os.path.getsize)


@pytest.mark.parametrize("fmt", deploy.FORMATS)
def test_every_format_is_sealed_and_a_flipped_byte_refused(fmt, tmp_path):
  if fmt == "onnx":
    pytest.importorskip("onnxruntime")
  if fmt == "savedmodel":
    pytest.importorskip("tensorflow")
  x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
  variables = PLAIN.init(jax.random.key(0), x)
  path = deploy.artefact_path(str(tmp_path / "plain"), fmt)
  deploy.EXPORTERS[fmt](PLAIN, variables, SHAPE, path)
  digest = integrity.digest_file(path)
  assert digest == (os.path.join(path, "SHA256SUMS") if os.path.isdir(path) else f"{path}.sha256")
  assert os.path.exists(digest)
  got = np.asarray(deploy.LOADERS[fmt](path)(x))
  chex.assert_trees_all_close(got, np.asarray(PLAIN.apply(variables, x)), atol=1e-5, rtol=0)
  damaged = largest_file(path)
  flip_byte(damaged, os.path.getsize(damaged) // 2)
  with pytest.raises(integrity.DigestError, match=f"{damaged} is damaged"):
    deploy.LOADERS[fmt](path)
