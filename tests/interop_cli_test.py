"""convert.py --from_torch / --from_keras / --export: import, convert, verify, export in one go,
and every bad input as one `error: ...` paragraph with nothing written (tests/convert_cli.py
runs convert.py in this process)."""

import json
import os

import chex
import h5py
import jax
import numpy as np
import pytest
from convert_cli import assert_fails, run_cli
from torchvision_state_dicts import numpy_resnet18

import rmjax
from rmjax import deploy


@pytest.fixture
def weights(tmp_path):
  """A torchvision ResNet-18 state dict (10 classes) as a .safetensors file: no torch needed."""
  from safetensors.numpy import save_file

  path = tmp_path / "r18.safetensors"
  save_file(numpy_resnet18(num_classes=10), str(path))
  return path


def test_import_convert_and_export(capsys, tmp_path, weights):
  plain_dir = tmp_path / "plain"
  code, out, err = run_cli(
    capsys,
    "--from_torch=resnet18",
    weights,
    plain_dir,
    "--input_size=32",
    f"--export={','.join(deploy.FORMATS)}",
  )
  assert code == 0, err
  assert "converting resnet18 (torchvision) (checked on 32x32x3 inputs)" in out
  for fmt in deploy.FORMATS:
    path = deploy.artefact_path(str(plain_dir), fmt)
    assert f"{fmt} file" in out and f"wrote {path} ({fmt})" in out
  assert sorted(os.listdir(tmp_path)) == [
    "plain",
    "plain.onnx",
    "plain.onnx.sha256",  # the files' digests (rmjax.integrity); the directories hold theirs
    "plain.savedmodel",
    "plain.stablehlo",
    "plain.stablehlo.sha256",
    "plain.structured.onnx",
    "plain.structured.onnx.sha256",
    "r18.safetensors",
  ]
  plain, variables = rmjax.load_plain(str(plain_dir))
  source = json.loads((plain_dir / "plain.json").read_text())["source"]
  assert source["framework"] == "torch" and source["imported_from"] == str(weights)
  assert source["num_classes"] == 10
  x = np.random.default_rng(1).standard_normal((3, 32, 32, 3)).astype(np.float32)
  want = np.asarray(jax.jit(plain.apply)(variables, x))
  for fmt in deploy.FORMATS:
    got = deploy.LOADERS[fmt](deploy.artefact_path(str(plain_dir), fmt))(x)
    chex.assert_trees_all_close(np.asarray(got), want, atol=1e-4, rtol=0)


def test_bad_imports_are_one_error_each(capsys, tmp_path, weights):
  plain = tmp_path / "plain"
  assert_fails(
    capsys, tmp_path, ["--from_torch=resnet18", tmp_path / "no.pth", plain], "does not exist"
  )
  (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  assert_fails(
    capsys,
    tmp_path,
    ["--from_torch=resnet18", tmp_path / "bad.safetensors", plain],
    "cannot be read as safetensors",
  )
  assert_fails(
    capsys,
    tmp_path,
    ["--from_torch=resnet19", weights, plain],
    "unknown torchvision architecture 'resnet19'; supported: resnet18",
  )
  # The file holds a ResNet-18: as a ResNet-34, its missing blocks and keys are all named.
  assert_fails(
    capsys,
    tmp_path,
    ["--from_torch=resnet34", weights, plain],
    "missing layer1.2.conv1.weight",
    "missing layer4.2.bn2.running_var",
  )
  from safetensors.numpy import save_file

  sd = numpy_resnet18(num_classes=10)
  sd["fc.bias"] = np.zeros(11, np.float32)
  sd["layer2.0.conv1.weight"] = np.zeros((128, 64, 5, 5), np.float32)
  del sd["layer3.0.downsample.1.weight"]
  sd["extra.weight"] = np.zeros(3, np.float32)
  save_file(sd, str(tmp_path / "mixed.safetensors"))
  assert_fails(
    capsys,
    tmp_path,
    ["--from_torch=resnet18", tmp_path / "mixed.safetensors", plain],
    "4 problem(s)",
    "fc.bias has shape (11,), expected (10,)",
    "layer2.0.conv1.weight has shape (128, 64, 5, 5), expected (128, 64, 3, 3)",
    "missing layer3.0.downsample.1.weight",
    "unexpected extra.weight",
  )
  assert_fails(
    capsys,
    tmp_path,
    ["--from_torch=resnet18", "--from_keras", weights, plain],
    "not both",
  )
  assert_fails(capsys, tmp_path, ["--input_size=32", weights, plain], "--input_size is for")
  sd = numpy_resnet18(num_classes=10)
  sd["layer1.0.conv1.weight"][0, 0, 0, :2] = [np.nan, np.inf]
  save_file(sd, str(tmp_path / "nan.safetensors"))
  assert_fails(
    capsys,
    tmp_path,
    ["--from_torch=resnet18", tmp_path / "nan.safetensors", plain],
    "holds non-finite weights (NaN or inf) in 1 array(s): params/layer1_0/conv1/kernel (1 NaN, "
    "1 inf of 36864)",
  )


def test_unsupported_keras_layer(capsys, tmp_path):
  # A legacy Keras .h5 whose config has a layer MobileNetV2 does not: written by hand.
  config = {
    "class_name": "Functional",
    "config": {
      "layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 32, 32, 3]}},
        {"class_name": "Rescaling", "config": {"name": "scale"}},
      ]
    },
  }
  with h5py.File(tmp_path / "odd.h5", "w") as f:
    f.attrs["model_config"] = json.dumps(config)
    f.create_group("model_weights").attrs["layer_names"] = []
  assert_fails(
    capsys,
    tmp_path,
    ["--from_keras", tmp_path / "odd.h5", tmp_path / "plain"],
    "unsupported layer 'scale' (Rescaling)",
    "no classifier",
    "missing Conv1/kernel",
  )


def test_bad_exports(capsys, tmp_path, weights):
  plain = tmp_path / "plain"
  assert_fails(
    capsys,
    tmp_path,
    ["--from_torch=resnet18", weights, plain, "--export=tflite"],
    "unknown export format(s) 'tflite'; known: stablehlo, savedmodel, onnx",
  )
  (tmp_path / "plain.stablehlo").write_bytes(b"old")
  assert_fails(
    capsys,
    tmp_path,
    ["--from_torch=resnet18", weights, plain, "--export=stablehlo"],
    "plain.stablehlo already exists; pass --overwrite",
  )
