"""convert.py --features: a PLAIN with feature taps and artefacts with one output per feature
map, each equal to the residual network's maps; bad requests are one `error: ...` paragraph
(tests/convert_cli.py runs convert.py in this process)."""

import json
import os

import chex
import numpy as np
import pytest
from convert_cli import run_cli
from torchvision_state_dicts import numpy_resnet18

import rmjax
from rmjax import deploy, export, run
from rmjax.models.plain import Conv, GlobalAvgPool, PlainNet, ReLU
from rmjax.testing import eval_logits, random_variables


@pytest.fixture
def weights(tmp_path):
  """A torchvision ResNet-18 state dict (10 classes) as a .safetensors file: no torch needed."""
  from safetensors.numpy import save_file

  path = tmp_path / "r18.safetensors"
  save_file(numpy_resnet18(num_classes=10), str(path))
  return path


def test_features_from_import_to_every_artefact(capsys, tmp_path, weights):
  plain_dir = tmp_path / "plain"
  code, out, err = run_cli(
    capsys,
    "--from_torch=resnet18",
    weights,
    plain_dir,
    "--input_size=64",
    "--features",
    f"--export={','.join(deploy.FORMATS)}",
  )
  assert code == 0, err
  assert "4 feature maps" in out and "features: the outputs of layers" in out
  plain, variables = rmjax.load_plain(str(plain_dir))
  assert len(plain.taps) == 4
  assert json.loads((plain_dir / "plain.json").read_text())["source"]["features"] is True
  source = run.load_imported(str(weights), torch_arch="resnet18", input_size=64)
  x = np.random.default_rng(1).standard_normal((3, 64, 64, 3)).astype(np.float32)
  want = eval_logits(source.model, source.variables, x, features=True)  # the residual network
  assert [w.shape[1] for w in want] == [16, 8, 4, 2]  # strides 4, 8, 16, 32
  got = {"plain": eval_logits(plain, variables, x, features=True)}
  for fmt in deploy.FORMATS:
    got[fmt] = deploy.LOADERS[fmt](deploy.artefact_path(str(plain_dir), fmt))(x)
  for maps in got.values():
    assert len(maps) == 4
    for g, w in zip(maps, want, strict=True):
      scale = max(1.0, float(np.max(np.abs(w))))
      chex.assert_trees_all_close(np.asarray(g), np.asarray(w), atol=1e-4 * scale, rtol=0)


def test_a_plain_network_without_taps_has_no_features(tmp_path):
  net = PlainNet((Conv(3, 4, 3, padding=1), ReLU(), GlobalAvgPool()))
  x = np.zeros((1, 8, 8, 3), np.float32)
  origin = {"model": "plain", "notes": []}
  source = run.Run("p", None, None, net, random_variables(net, x), (8, 8, 3), origin)
  with pytest.raises(export.ExportError, match="without feature taps"):
    export.export_plain(source, str(tmp_path / "plain"), features=True)
  assert os.listdir(tmp_path) == []
