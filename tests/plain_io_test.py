"""plain.json round trips for layer specs; the asymmetric conv padding Keras networks need; a
damaged or non-finite PLAIN directory is refused (its digest, rmjax.integrity)."""

import json
import logging
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmjax
from rmjax import plain_io
from rmjax.models.plain import Conv, Dense, GlobalAvgPool, PlainNet, ReLU
from rmjax.testing import array_data_files, flip_byte


def test_asymmetric_padding_round_trips(tmp_path):
  layers = (Conv(3, 4, 3, 2, padding=(0, 1)), ReLU(6.0), Conv(4, 4, 3, padding=[1, 1]))
  plain = PlainNet((*layers, GlobalAvgPool(), Dense(4, 3)))
  assert plain.layers[2].padding == 1  # a symmetric pair is its int: equal layers stay equal
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = plain.init(jax.random.key(1), x)
  path = str(tmp_path / "plain")
  rmjax.save_plain(path, plain, variables, input_shape=(8, 8, 3))
  with open(os.path.join(path, "plain.json")) as f:
    assert json.load(f)["layers"][0]["padding"] == [0, 1]
  loaded, loaded_vars = rmjax.load_plain(path)
  assert loaded == plain
  chex.assert_trees_all_close(loaded.apply(loaded_vars, x), plain.apply(variables, x), atol=0)
  assert "padding=((0, 1), (0, 1))" in str(plain) and "padding=(1, 1)" in str(plain)


def test_old_plain_json_still_loads():
  # Written before padding could be a pair: an int.
  old = [{"type": "Conv", "in_features": 3, "out_features": 4, "kernel_size": 3, "stride": 1,
          "padding": 1, "groups": 1, "use_bias": True}]  # fmt: skip
  assert plain_io.layers_from_json(old) == (Conv(3, 4, 3, 1, padding=1),)


def test_padding_low_high_is_tensorflow_same_on_even_sizes():
  conv = Conv(3, 4, 3, 2, padding=(0, 1))
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 3))
  variables = PlainNet((conv,)).init(jax.random.key(1), x)
  kernel = variables["params"]["layers_0"]["kernel"]
  bias = variables["params"]["layers_0"]["bias"]
  same = jax.lax.conv_general_dilated(
    x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  got = PlainNet((conv,)).apply(variables, x)
  np.testing.assert_allclose(got, same + bias, atol=1e-5)
  assert got.shape == (1, 4, 4, 4)
  assert conv.pads == (0, 1) and Conv(3, 4, 3, padding=np.int64(2)).padding == 2


def test_same_padding_round_trips_and_serves_every_size(tmp_path):
  """TensorFlow's "SAME" (Keras imports): stored as "same", padded per input when applied."""
  plain = PlainNet((Conv(3, 4, 3, 2, padding="SAME"), ReLU(), GlobalAvgPool(), Dense(4, 3)))
  assert plain.layers[0].padding == "same" and "padding=same" in str(plain)
  variables = plain.init(jax.random.key(1), jnp.zeros((1, 9, 9, 3)))
  path = str(tmp_path / "plain")
  rmjax.save_plain(path, plain, variables, input_shape=(9, 9, 3))
  with open(os.path.join(path, "plain.json")) as f:
    assert json.load(f)["layers"][0]["padding"] == "same"
  loaded, loaded_vars = rmjax.load_plain(path)
  assert loaded == plain
  for shape in ((9, 9), (8, 11)):
    x = jax.random.normal(jax.random.key(0), (2, *shape, 3))
    chex.assert_trees_all_close(loaded.apply(loaded_vars, x), plain.apply(variables, x), atol=0)
  entry = {"type": "Conv", "in_features": 3, "out_features": 4, "kernel_size": 3, "padding": "full"}
  with pytest.raises(plain_io.PlainFormatError, match="layer 0 \\(Conv\\): padding 'full'"):
    plain_io.layers_from_json([entry])


def small_plain_dir(tmp_path, variables_fn=None):
  plain = PlainNet((Conv(3, 4, 3), ReLU(), GlobalAvgPool(), Dense(4, 3)))
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = plain.init(jax.random.key(1), x)
  if variables_fn:
    variables = variables_fn(variables)
  path = str(tmp_path / "plain")
  rmjax.save_plain(path, plain, variables, input_shape=(8, 8, 3))
  return path, plain, variables, x


def test_a_flipped_byte_anywhere_is_refused_naming_the_file(tmp_path):
  path, plain, variables, x = small_plain_dir(tmp_path)
  data = array_data_files(os.path.join(path, "variables"))[-1]  # the largest: the arrays' bytes
  size = os.path.getsize(data)
  for offset in sorted({0, 1, size // 4, size // 2, 3 * size // 4, size - 2, size - 1}):
    flip_byte(data, offset)
    with pytest.raises(plain_io.PlainFormatError, match=f"{data} is damaged") as e:
      rmjax.load_plain(path)
    assert "\n" not in str(e.value)
    flip_byte(data, offset)
  arch_file = os.path.join(path, "plain.json")
  with open(arch_file) as f:
    text = f.read()
  with open(arch_file, "w") as f:  # still valid JSON, and a valid network: only the digest knows
    f.write(text.replace('"stride": 1', '"stride": 2', 1))
  with pytest.raises(plain_io.PlainFormatError, match=f"{arch_file} is damaged"):
    rmjax.load_plain(path)
  with open(arch_file, "w") as f:
    f.write(text)
  loaded, loaded_vars = rmjax.load_plain(path)
  chex.assert_trees_all_close(loaded.apply(loaded_vars, x), plain.apply(variables, x), atol=0)


def test_a_plain_directory_without_digest_loads_with_a_warning(tmp_path, caplog):
  path, plain, variables, x = small_plain_dir(tmp_path)
  os.remove(os.path.join(path, "SHA256SUMS"))  # as written before digests
  with caplog.at_level(logging.WARNING):
    loaded, loaded_vars = rmjax.load_plain(path)
  assert "has no SHA-256 digest" in caplog.text
  chex.assert_trees_all_close(loaded.apply(loaded_vars, x), plain.apply(variables, x), atol=0)


def test_non_finite_weights_are_named(tmp_path):
  def poison(variables):
    kernel = np.array(variables["params"]["layers_3"]["kernel"])
    kernel[0, 0] = np.nan
    return {"params": {**variables["params"], "layers_3": {"kernel": kernel, "bias": np.ones(3)}}}

  path, *_ = small_plain_dir(tmp_path, poison)
  with pytest.raises(plain_io.PlainFormatError, match=r"params/layers_3/kernel \(1 NaN of 12\)"):
    rmjax.load_plain(path)
