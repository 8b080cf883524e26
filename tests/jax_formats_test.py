"""rmjax.deploy.jax_formats: the StableHLO and SavedModel artefacts reload and compute what the
plain network computes, at any batch size."""

import os
import re

import chex
import jax
import numpy as np
import pytest

from rmjax import deploy
from rmjax.deploy import jax_formats
from rmjax.models.plain import (
  BatchNorm,
  Conv,
  Dense,
  GlobalAvgPool,
  MaxPool,
  PlainNet,
  PReLU,
  ReLU,
)
from rmjax.testing import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (16, 16, 3)
# Every layer kind, asymmetric padding included.
PLAIN = PlainNet(
  (
    Conv(3, 8, 3, 2, padding=(0, 1), use_bias=False),
    BatchNorm(8, epsilon=1e-3),
    PReLU(8, max_value=6.0, clipped=5),
    Conv(8, 8, 3, 1, padding=1, groups=8),
    ReLU(6.0),
    MaxPool(),
    Conv(8, 12, 1),
    ReLU(),
    GlobalAvgPool(),
    Dense(12, 5),
  )
)


@pytest.fixture(scope="module")
def network():
  x = np.zeros((1, *SHAPE), np.float32)
  variables = random_variables(PLAIN, x, seed=3)
  variables["params"]["layers_2"]["slope"] = np.linspace(-0.5, 1.0, 8).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    apply = jax.jit(PLAIN.apply)
    return variables, lambda images: np.asarray(apply(variables, images))


def batches():
  rng = np.random.default_rng(0)
  return [rng.standard_normal((n, *SHAPE)).astype(np.float32) for n in (1, 5)]


def test_stablehlo_round_trip(network, tmp_path):
  variables, want = network
  path = str(tmp_path / "net.stablehlo")
  jax_formats.export_stablehlo(PLAIN, variables, SHAPE, path)
  assert os.listdir(tmp_path) == ["net.stablehlo"]
  with open(path, "rb") as f:
    exported = jax.export.deserialize(f.read())
  assert str(exported.in_avals[0].shape[0]) == "batch"  # symbolic
  assert exported.in_avals[0].shape[1:] == SHAPE
  assert set(exported.platforms) == {"cpu", "cuda", "tpu"}
  load = jax_formats.load_stablehlo(path)
  for x in batches():
    got = np.asarray(load(x))
    print(f"stablehlo batch {len(x)}: max |diff| {np.max(np.abs(got - want(x))):.3g}")
    chex.assert_trees_all_close(got, want(x), atol=1e-5, rtol=0)


def test_docs_loader_example_runs(network, tmp_path):
  """The StableHLO loader of docs/interop.md, run as written (only the path changes)."""
  variables, want = network
  path = str(tmp_path / "plain.stablehlo")
  jax_formats.export_stablehlo(PLAIN, variables, SHAPE, path)
  with open(os.path.join(ROOT, "docs", "interop.md")) as f:
    doc = f.read()
  code = re.search(r"<!-- stablehlo loader example -->\n```python\n(.*?)```", doc, re.S)[1]
  scope = {}
  exec(code.replace("/tmp/plain.stablehlo", path), scope)
  assert scope["logits"].shape == (4, 5)
  chex.assert_trees_all_close(
    np.asarray(scope["logits"]), want(np.zeros((4, *SHAPE), np.float32)), atol=1e-5, rtol=0
  )


def test_savedmodel_round_trip_and_tflite(network, tmp_path):
  tf = pytest.importorskip("tensorflow")
  variables, want = network
  path = str(tmp_path / "net.savedmodel")
  jax_formats.export_savedmodel(PLAIN, variables, SHAPE, path)
  jax_formats.export_savedmodel(PLAIN, variables, SHAPE, path)  # replaces it
  assert os.listdir(tmp_path) == ["net.savedmodel"]
  serve = tf.saved_model.load(path).signatures["serving_default"]
  for x in batches():
    got = serve(images=tf.constant(x))["logits"].numpy()
    print(f"savedmodel batch {len(x)}: max |diff| {np.max(np.abs(got - want(x))):.3g}")
    chex.assert_trees_all_close(got, want(x), atol=1e-5, rtol=0)
  # Convertible to TFLite with builtin ops only.
  tflite = tf.lite.TFLiteConverter.from_saved_model(path).convert()
  interpreter = tf.lite.Interpreter(model_content=tflite)
  x = batches()[1]
  interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  print(f"tflite batch {len(x)}: max |diff| {np.max(np.abs(got - want(x))):.3g}")
  chex.assert_trees_all_close(got, want(x), atol=1e-4, rtol=0)


def test_artefacts_sit_next_to_plain():
  assert deploy.artefact_path("/a/b/plain/", "stablehlo") == "/a/b/plain.stablehlo"
  assert deploy.artefact_path("/a/b/plain", "savedmodel") == "/a/b/plain.savedmodel"
  assert deploy.artefact_path("/a/b/plain", "onnx") == "/a/b/plain.onnx"
