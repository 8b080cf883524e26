"""rmjax.interop.from_keras: a Keras MobileNetV2 (.h5 and .keras) gives Keras' logits, before
and after RM, at every input size; what does not fit is named. Keras runs on whatever backend it
finds (TensorFlow here); the files are written by the tests."""

import functools
import io
import json
import shutil
import zipfile

import chex
import h5py
import jax
import numpy as np
import pytest
from convert_cli import run_cli

import rmjax
from rmjax import interop, transforms
from rmjax.models import mobilenet
from rmjax.models import plain as plain_layers
from rmjax.testing import eval_logits

# Keras' TensorFlow backend warns about NumPy 2's copy keyword on every get/set_weights.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
X = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames=("keep_bn",))


# --- the rmjax side, without Keras -----------------------------------------------------------


def test_keras_padding_and_epsilon_reach_the_plain_layers():
  """Exactness is checked against Keras below; here, that the plain network says it."""
  model = mobilenet.mobilenetv2(width=0.35, num_classes=5, bn_epsilon=1e-3, padding="keras")
  x = jax.ShapeDtypeStruct(X.shape, np.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  plain, _ = jax.eval_shape(lambda v: transforms.rm_convert(model, v, keep_bn=True), variables)
  convs = [x for x in plain.layers if isinstance(x, plain_layers.Conv) and x.kernel_size == 3]
  # TensorFlow's "SAME" where it depends on the size (stride 2), its fixed value elsewhere.
  assert {(c.stride, c.padding) for c in convs} == {(2, "same"), (1, 1)}
  assert {x.epsilon for x in plain.layers if isinstance(x, plain_layers.BatchNorm)} == {1e-3}
  assert "stride=(2, 2), padding=same" in str(plain)
  with pytest.raises(ValueError, match="unknown padding 'tf'"):
    mobilenet.mobilenetv2(padding="tf").init(jax.random.key(0), X)


# --- against Keras ---------------------------------------------------------------------------


def randomize(model, seed):
  """Every Keras weight drawn at random, BN statistics included (nested models too)."""
  import keras

  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      randomize(layer, seed + 1)
      continue
    weights = layer.get_weights()
    if isinstance(layer, keras.layers.BatchNormalization):
      shape = weights[0].shape
      sign = np.where(rng.uniform(size=shape) < 0.8, 1.0, -1.0)
      weights = [
        rng.uniform(0.3, 1.2, shape) * sign,
        0.3 * rng.standard_normal(shape),
        0.3 * rng.standard_normal(shape),
        rng.uniform(0.3, 2.0, shape),
      ]
    else:
      depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
      weights = [
        rng.standard_normal(w.shape) * np.sqrt(2.0 / (9 if depthwise else np.prod(w.shape[:-1])))
        if w.ndim > 1
        else 0.1 * rng.standard_normal(w.shape)
        for w in weights
      ]
    layer.set_weights([w.astype(np.float32) for w in weights])
  return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Two randomised Keras networks saved as .h5 and .keras, with their outputs on X:
  `standard` is MobileNetV2(alpha=0.35, classes=7) returning logits; `custom` an include_top=False
  alpha=0.5 base + Dropout + a softmax Dense head of 5 classes. Returns `(directory, outputs)`."""
  keras = pytest.importorskip("keras")
  tmp_dir = str(tmp_path_factory.mktemp("keras"))
  app = keras.applications.MobileNetV2
  standard = app(
    weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=7, classifier_activation=None
  )
  base = app(weights=None, input_shape=(32, 32, 3), alpha=0.5, include_top=False, pooling="avg")
  inputs = keras.Input((32, 32, 3))
  head = keras.layers.Dense(5, activation="softmax", name="my_head")
  custom = keras.Model(inputs, head(keras.layers.Dropout(0.2)(base(inputs))))
  out = {}
  for name, model in (("standard", standard), ("custom", custom)):
    randomize(model, seed=len(name))
    for ext in ("h5", "keras"):
      model.save(f"{tmp_dir}/{name}.{ext}")
    out[name] = np.asarray(model(X, training=False))
  return tmp_dir, out


def test_keras_logits_equal_before_and_after_rm(saved):
  tmp_dir, outputs = saved
  imported = interop.import_keras(f"{tmp_dir}/standard.keras")
  legacy = interop.import_keras(f"{tmp_dir}/standard.h5")
  assert imported.model == legacy.model
  chex.assert_trees_all_equal(imported.variables, legacy.variables)
  model, variables = imported.model, imported.variables
  assert model == mobilenet.mobilenetv2(width=0.35, num_classes=7, bn_epsilon=1e-3, padding="keras")
  assert imported.input_shape == (32, 32, 3) and imported.notes == ()
  assert imported.name == "mobilenetv2 width 0.35 (Keras)"
  want = outputs["standard"]
  got = {"imported": eval_logits(model, variables, X)}
  for keep_bn in (False, True):
    plain, plain_vars = convert(model, variables, keep_bn=keep_bn)
    got["keep_bn" if keep_bn else "deploy"] = eval_logits(plain, plain_vars, X)
  for form, logits in got.items():
    print(f"keras standard {form}: max |diff| {np.max(np.abs(np.asarray(logits) - want)):.3g}")
    chex.assert_trees_all_close(np.asarray(logits), want, atol=1e-4, rtol=0)
  assert np.max(np.abs(want)) > 0.5


def test_custom_head_from_both_formats(saved):
  tmp_dir, outputs = saved
  imported = interop.import_keras(f"{tmp_dir}/custom.keras")
  legacy = interop.import_keras(f"{tmp_dir}/custom.h5")
  chex.assert_trees_all_equal(imported.variables, legacy.variables)
  model, variables = imported.model, imported.variables
  assert model.num_classes == 5 and model.last_features == 1280
  assert mobilenet.mobilenetv2_width(model) == 0.5
  assert "'my_head' ends with a softmax" in imported.notes[0]
  # Conversion of this architecture is checked above; here, the head.
  probabilities = np.asarray(jax.nn.softmax(eval_logits(model, variables, X)))
  print(
    f"keras custom head: max |softmax diff| {np.max(np.abs(probabilities - outputs['custom'])):.3g}"
  )
  chex.assert_trees_all_close(probabilities, outputs["custom"], atol=1e-5, rtol=0)


def test_keras3_file_without_layer_names_in_its_weights(saved, tmp_path):
  """Older Keras 3 files do not record layer names in model.weights.h5: config.json's layer
  order gives them."""
  tmp_dir, _ = saved
  for name in ("standard", "custom"):
    source, target = f"{tmp_dir}/{name}.keras", str(tmp_path / f"{name}.keras")
    with zipfile.ZipFile(source) as z:
      members = {n: z.read(n) for n in z.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
      f.visititems(lambda _, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None)
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as z:
      for member, data in members.items():
        z.writestr(member, data)
    chex.assert_trees_all_equal(
      interop.import_keras(target).variables, interop.import_keras(source).variables
    )


def test_unsupported_layers_are_all_named(tmp_path):
  keras = pytest.importorskip("keras")
  base = keras.applications.MobileNetV2(
    weights=None, input_shape=(32, 32, 3), alpha=0.35, include_top=False, pooling="max"
  )
  inputs = keras.Input((32, 32, 3))
  x = base(keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(inputs))
  x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
  model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
  model.save(tmp_path / "bad.keras")
  with pytest.raises(interop.WeightImportError) as e:
    interop.from_keras(str(tmp_path / "bad.keras"))
  message = str(e.value)
  assert "unsupported layer 'scale' (Rescaling)" in message
  assert "(GlobalMaxPooling2D)" in message
  assert "unsupported layer 'hidden': Dense with activation relu" in message
  assert "2 Dense layers (hidden, out)" in message


def test_bad_files(saved, tmp_path):
  tmp_dir, _ = saved
  with pytest.raises(interop.WeightImportError, match="does not exist"):
    interop.from_keras(str(tmp_path / "nope.keras"))
  data = open(f"{tmp_dir}/standard.h5", "rb").read()
  (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
  with pytest.raises(interop.WeightImportError, match="cannot be read|neither"):
    interop.from_keras(str(tmp_path / "cut.h5"))
  (tmp_path / "text.keras").write_text("hello")
  with pytest.raises(interop.WeightImportError, match="neither a .keras archive nor an HDF5"):
    interop.from_keras(str(tmp_path / "text.keras"))
  # A Keras 3 weights-only file has no layer names to go by.
  with zipfile.ZipFile(f"{tmp_dir}/standard.keras") as z:
    (tmp_path / "w.weights.h5").write_bytes(z.read("model.weights.h5"))
  with pytest.raises(interop.WeightImportError, match="save the whole model"):
    interop.from_keras(str(tmp_path / "w.weights.h5"))
  # Weights of a layer deleted from a legacy .h5: named.
  shutil.copy(f"{tmp_dir}/standard.h5", tmp_path / "cut_layer.h5")
  with h5py.File(tmp_path / "cut_layer.h5", "r+") as f:
    del f["model_weights/block_3_project/block_3_project/kernel"]
    f["model_weights/block_3_project"].attrs["weight_names"] = []
  with pytest.raises(interop.WeightImportError, match="missing block_3_project/kernel"):
    interop.from_keras(str(tmp_path / "cut_layer.h5"))


# --- every input size ------------------------------------------------------------------------

# TensorFlow's "SAME" pads a stride-2 3x3 conv (0, 1) on even sizes and (1, 1) on odd ones, and
# the sizes the stride-2 convs see follow from the image size: 33 is odd at every one of them,
# 100 and 112 turn odd (at 25 and 7), 96 (like 160 and 224: a multiple of 32) stays even.
# Height and width are padded apart, so (112, 100) stands for 112 x 112 too. Each size costs two
# compilations: the multiples of 32, which the old fixed padding got right, are 96 alone.
SIZES = ((33, 33), (96, 96), (100, 100), (112, 100))


def images(hw, seed=0):
  return np.random.default_rng(seed).standard_normal((2, *hw, 3)).astype(np.float32)


def assert_same_logits(got, want, what):
  diff = float(np.max(np.abs(np.asarray(got) - want)))
  print(f"{what}: max |diff| {diff:.3g}, max |logit| {np.max(np.abs(want)):.3g}")
  assert diff <= 1e-4 * max(1.0, float(np.max(np.abs(want)))), what
  assert np.max(np.abs(want)) > 0.3


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
  """Keras' MobileNetV2(alpha=0.35, classes=7) built for each of SIZES (Keras fixes a model's
  input size), all with the same random weights, saved as .keras: `{hw: (path, x, logits)}`."""
  keras = pytest.importorskip("keras")
  tmp_dir = tmp_path_factory.mktemp("keras_sizes")
  out = {}
  for hw in SIZES:
    model = keras.applications.MobileNetV2(
      weights=None, input_shape=(*hw, 3), alpha=0.35, classes=7, classifier_activation=None
    )
    randomize(model, seed=11)  # same shapes, same draws: the same weights at every size
    path = str(tmp_dir / f"mobilenetv2_{hw[0]}x{hw[1]}.keras")
    model.save(path)
    x = images(hw)
    out[hw] = path, x, np.asarray(model(x, training=False))
  return out


def test_keras_built_at_any_size_imports_exactly_and_one_plain_network_serves_them_all(sized):
  imported = {hw: interop.import_keras(path) for hw, (path, _, _) in sized.items()}
  first = imported[SIZES[0]]
  assert first.model.padding == "keras"
  for hw, imp in imported.items():
    assert imp.input_shape == (*hw, 3)
    assert imp.model == first.model
    chex.assert_trees_all_equal(imp.variables, first.variables)
  model, variables = first.model, first.variables
  plain, plain_vars = convert(model, variables)
  for hw, (_, x, want) in sized.items():
    assert_same_logits(eval_logits(model, variables, x), want, f"rmjax model at {hw}")
    assert_same_logits(eval_logits(plain, plain_vars, x), want, f"plain network at {hw}")
  # Structured execution (Dirac channels skipped) on the size that mixes odd and even.
  _, x, want = sized[(112, 100)]
  with jax.default_matmul_precision("highest"):
    structured = jax.jit(functools.partial(plain.apply, structured=True))(plain_vars, x)
  assert_same_logits(structured, want, "plain network, structured, at (112, 100)")


@pytest.mark.slow  # the default run covers each padding case (33, 96, 100, 112 x 100) above
@pytest.mark.parametrize("size", [96, 100, 112, 160, 224])
def test_keras_at_the_sizes_users_build(size, tmp_path):
  """Square MobileNetV2s at the sizes users build them (the issue's list), each imported and
  converted on its own: the rmjax model and the plain network give Keras' logits."""
  keras = pytest.importorskip("keras")
  model = keras.applications.MobileNetV2(
    weights=None, input_shape=(size, size, 3), alpha=0.35, classes=7, classifier_activation=None
  )
  randomize(model, seed=11)
  model.save(tmp_path / "m.keras")
  x = images((size, size))
  want = np.asarray(model(x, training=False))
  imported = interop.import_keras(str(tmp_path / "m.keras"))
  plain, plain_vars = convert(imported.model, imported.variables)
  assert_same_logits(eval_logits(imported.model, imported.variables, x), want, f"model {size}")
  assert_same_logits(eval_logits(plain, plain_vars, x), want, f"plain network {size}")


def test_cli_checks_at_the_input_size_asked_and_plain_json_keeps_same(sized, capsys, tmp_path):
  """convert.py --from_keras FILE PLAIN --input_size 33 on a file Keras built for 100 px: the
  check batch is 33 px, and the written network computes what Keras built for 33 px does."""
  plain_dir = tmp_path / "plain"
  code, out, err = run_cli(
    capsys, "--from_keras", sized[(100, 100)][0], plain_dir, "--input_size=33"
  )
  assert code == 0, err
  assert "(checked on 33x33x3 inputs)" in out
  arch = json.loads((plain_dir / "plain.json").read_text())
  assert arch["input_shape"] == [33, 33, 3]
  paddings = [x["padding"] for x in arch["layers"] if x["type"] == "Conv"]
  assert "same" in paddings and all(p in ("same", 0, 1) for p in paddings)
  plain, plain_vars = rmjax.load_plain(str(plain_dir))
  _, x, want = sized[(33, 33)]
  assert_same_logits(eval_logits(plain, plain_vars, x), want, "plain.json reloaded, at 33 px")


def test_keras_built_without_a_size(tmp_path):
  """A MobileNetV2 Keras built for `(None, None, 3)` inputs froze its blocks' ZeroPadding2D at
  (0, 1) (keras.applications' correct_pad cannot know the size) while its stem stays "SAME":
  the import is `padding="keras_unsized"` and exact at odd sizes too."""
  keras = pytest.importorskip("keras")
  base = keras.applications.MobileNetV2(
    weights=None, input_shape=(None, None, 3), alpha=0.35, include_top=False, pooling="avg"
  )
  inputs = keras.Input((None, None, 3))
  model = keras.Model(inputs, keras.layers.Dense(4, name="head")(base(inputs)))
  randomize(model, seed=5)
  for ext in ("keras", "h5"):
    model.save(tmp_path / f"unsized.{ext}")
  imported = interop.import_keras(str(tmp_path / "unsized.keras"))
  legacy = interop.import_keras(str(tmp_path / "unsized.h5"))
  assert imported.model == legacy.model and imported.model.padding == "keras_unsized"
  assert imported.input_shape is None
  plain, plain_vars = convert(imported.model, imported.variables)
  # Height 33: the stem pads (1, 1), the blocks (0, 1) on their odd sizes 17, 9, 5, 3 (where
  # "SAME" would pad (1, 1)); width 40: (0, 1) at the stem, then 20, 10, 5, 3.
  x = images((33, 40), seed=1)
  want = np.asarray(model(x, training=False))
  assert_same_logits(eval_logits(imported.model, imported.variables, x), want, "unsized, 33x40")
  assert_same_logits(eval_logits(plain, plain_vars, x), want, "unsized plain network, 33x40")
