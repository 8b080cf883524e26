"""Fine-tuning a converted network (Appendix A.2): BN re-estimation and `config.init_from`."""

import json
import logging
import os
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from train_config import tiny_config

from rmjax import finetune, models, save_plain, train, transforms
from rmjax.models import mobilenet
from rmjax.models.plain import Conv, Dense, GlobalAvgPool, PlainNet, ReLU
from rmjax.testing import random_variables
from rmjax.transforms.batchnorm import identity_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-5


def tiny_resnet():
  return models.create(
    "resnet20", num_classes=10, stem="cifar", stage_sizes=(1, 1, 1), widths=(4, 8, 8), stem_width=4
  )


def tiny_mobilenetv2():
  """A few inverted residual blocks with partial shortcuts: after RM, a block's projection and
  the next block's expansion fuse (Eq. 5), which moves a bias into the reserved BNs' means."""
  b = mobilenet.BlockSpec
  blocks = (b(0, 8, 1, 0), b(12, 8, 1, 2), b(12, 8, 1, 2), b(12, 8, 2, 0))
  return mobilenet.MobileNetV2(
    blocks, stem_features=8, last_features=16, num_classes=10, stem="cifar", activation="relu"
  )


def bn_of(variables, i):
  name = f"layers_{i}"
  return {**variables["params"][name], **variables["batch_stats"][name]}


def test_replace_statistics_keeps_the_function_of_any_batchnorm():
  rng = np.random.default_rng(0)
  c = 6
  bn = {
    "scale": rng.uniform(-1.5, 1.5, c).astype(np.float32),
    "bias": rng.normal(size=c).astype(np.float32),
    "mean": rng.normal(size=c).astype(np.float32),
    "var": rng.uniform(0.1, 3, c).astype(np.float32),
  }
  mean, var = rng.normal(size=c) * 2, rng.uniform(0, 5, c)
  var[0] = 0.0  # a constant channel: the rule never divides by the new variance

  def apply(bn, x):
    return (x - bn["mean"]) * (bn["scale"] / np.sqrt(bn["var"] + EPS)) + bn["bias"]

  new = finetune.replace_statistics(bn, mean, var, epsilon=EPS)
  x = rng.normal(size=(50, c)).astype(np.float32) * 3
  np.testing.assert_allclose(new["mean"], mean, rtol=1e-6)
  np.testing.assert_allclose(new["var"], var, rtol=1e-6)
  np.testing.assert_allclose(apply(new, x), apply(bn, x), atol=1e-5, rtol=1e-5)
  # An identity BN (Eq. 3) stays one, with the new statistics.
  identity = identity_batchnorm(jnp.zeros(c), jnp.ones(c), epsilon=EPS)
  chex.assert_trees_all_close(
    finetune.replace_statistics(identity, mean, var, epsilon=EPS),
    identity_batchnorm(jnp.asarray(mean, jnp.float32), jnp.asarray(var, jnp.float32), epsilon=EPS),
    atol=1e-6,
    rtol=1e-6,
  )


@pytest.mark.parametrize("make_model", [tiny_resnet, tiny_mobilenetv2], ids=["resnet", "mbv2"])
def test_reestimation_sets_data_statistics_and_keeps_logits(make_model):
  model = make_model()
  images = jax.random.uniform(jax.random.key(0), (12, 16, 16, 3), minval=-1.0, maxval=2.0)
  variables = random_variables(model, images, seed=3)
  plain, plain_vars = transforms.rm_convert(model, variables, keep_bn=True)
  reserved = finetune.reserved_batchnorms(plain)
  assert reserved
  # Batches as arrays and as train_batches-style dicts.
  batches = [images[:4], {"image": images[4:8], "label": None}, images[8:]]
  new_vars = finetune.reestimate_reserved_batchnorm(plain, plain_vars, batches)

  with jax.default_matmul_precision("highest"):
    apply = jax.jit(plain.apply)
    before, after = apply(plain_vars, images), apply(new_vars, images)
    # The data statistics computed directly: every BN here follows a conv, whose captured
    # output is the BN's input.
    _, captured = plain.apply(
      plain_vars, images, capture_intermediates=True, mutable=["intermediates"]
    )
  chex.assert_trees_all_close(after, before, atol=1e-5, rtol=0)

  shifted = False
  for i, layer in reserved.items():
    assert isinstance(plain.layers[i - 1], Conv)
    bn_input = np.asarray(captured["intermediates"][f"layers_{i - 1}"]["__call__"][0], np.float64)
    tail = bn_input[..., -layer.reserved :].reshape(-1, layer.reserved)
    old, new = bn_of(plain_vars, i), bn_of(new_vars, i)
    split = layer.features - layer.reserved
    np.testing.assert_allclose(new["mean"][split:], tail.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"][split:], tail.var(0), rtol=1e-5, atol=1e-6)
    for key in old:
      np.testing.assert_array_equal(new[key][:split], old[key][:split], err_msg=f"{i} {key}")
    shifted |= bool(np.any(old["mean"][split:] != 0))
  # Fusion moved biases into reserved BN means in the MobileNet, not in the ResNet.
  assert shifted == (make_model is tiny_mobilenetv2)
  # Nothing else changed.
  touched = {f"layers_{i}" for i in reserved}
  flat_old = traverse_util.flatten_dict(plain_vars)
  flat_new = traverse_util.flatten_dict(new_vars)
  assert flat_old.keys() == flat_new.keys()
  for path in flat_old:
    if path[1] not in touched:
      assert flat_new[path] is flat_old[path], path


def test_reestimation_without_reserved_channels_reads_no_batches():
  def never():
    raise AssertionError("read a batch")
    yield

  plain = PlainNet((Conv(3, 4, 3, padding=1), ReLU(), GlobalAvgPool(), Dense(4, 10)))
  variables = {"params": {}}
  assert finetune.reestimate_reserved_batchnorm(plain, variables, never()) is variables


def write_plain(path, layers, input_shape):
  plain = PlainNet(tuple(layers))
  x = jnp.zeros((1, *input_shape), jnp.float32)
  save_plain(str(path), plain, plain.init(jax.random.key(0), x), input_shape=input_shape)
  return str(path)


def test_fine_tune_a_converted_network(tmp_path, monkeypatch):
  original = train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / "residual"))
  state = original.state
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  plain, plain_vars = transforms.rm_convert(original.model, variables, keep_bn=True)
  source = str(tmp_path / "plain")
  save_plain(source, plain, plain_vars, input_shape=(32, 32, 1))

  calls = []
  real = finetune.reestimate_reserved_batchnorm

  def spy(*args, **kwargs):
    calls.append(kwargs["num_batches"])
    return real(*args, **kwargs)

  monkeypatch.setattr(finetune, "reestimate_reserved_batchnorm", spy)
  config = tiny_config(num_train_steps=2, init_from=source, init_bn_batches=2)
  workdir = str(tmp_path / "finetuned")
  tuned = train.train_and_evaluate(config, workdir)
  assert calls == [2]
  # The same layers, without the record of Dirac zeros: training fills them in, so the
  # fine-tuned network must not run structured (PlainNet's default).
  assert isinstance(tuned.model, PlainNet) and any(
    getattr(c, "structured", 0) for c in plain.layers
  )
  assert tuned.model.layers == tuple(
    layer.unstructured() if isinstance(layer, Conv) else layer for layer in plain.layers
  )
  # Before any step, the converted and re-estimated network is the original one.
  assert tuned.metrics["init_eval_top1"] == original.metrics["eval_top1"]
  np.testing.assert_allclose(
    tuned.metrics["init_eval_loss"], original.metrics["eval_loss"], rtol=1e-5
  )
  assert int(tuned.state.step) == 2 and np.isfinite(tuned.metrics["eval_loss"])
  moved = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))), tuned.state.params, plain_vars["params"]
  )
  assert max(jax.tree.leaves(moved)) > 0
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["init_from"] == os.path.abspath(source)

  # Resuming restores the checkpoint: no re-estimation, no evaluation before the first step.
  resumed = train.train_and_evaluate(tiny_config(num_train_steps=3, init_from=source), workdir)
  assert calls == [2]
  assert int(resumed.state.step) == 3 and "init_eval_top1" not in resumed.metrics
  assert np.isfinite(resumed.metrics["eval_loss"])
  # A workdir is not resumed into another model.
  with pytest.raises(ValueError, match=r"holds checkpoints of a run with config.init_from="):
    train.train_and_evaluate(tiny_config(num_train_steps=4), workdir)


def test_deploy_form_is_fine_tuned_with_a_warning(tmp_path, caplog):
  source = write_plain(
    tmp_path / "plain",
    [Conv(1, 4, 3, padding=1), ReLU(), GlobalAvgPool(), Dense(4, 10)],
    (32, 32, 1),
  )
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(
      tiny_config(num_train_steps=1, init_from=source), str(tmp_path / "run")
    )
  assert "has no BatchNorm (deploy form)" in caplog.text
  assert int(result.state.step) == 1 and result.state.batch_stats == {}
  assert np.isfinite(result.metrics["eval_loss"])


def test_init_from_errors(tmp_path):
  def error(init_from):
    with pytest.raises(ValueError) as e:
      train.train_and_evaluate(tiny_config(init_from=init_from), str(tmp_path / "run"))
    assert "\n" not in str(e.value)
    return str(e.value)

  assert error(str(tmp_path / "nope")).startswith("config.init_from: ")
  assert "no such directory" in error(str(tmp_path / "nope"))
  (tmp_path / "corrupt").mkdir()
  (tmp_path / "corrupt" / "plain.json").write_text("{")
  assert "cannot be read as JSON" in error(str(tmp_path / "corrupt"))

  layers = [Conv(1, 4, 3, padding=1), ReLU(), GlobalAvgPool()]
  wrong_size = write_plain(tmp_path / "size", [*layers, Dense(4, 10)], (28, 28, 1))
  assert "takes inputs of shape (28, 28, 1), but fashion_mnist_small images are (32, 32, 1)" in (
    error(wrong_size)
  )
  wrong_classes = write_plain(tmp_path / "classes", [*layers, Dense(4, 7)], (32, 32, 1))
  assert "has 7 outputs, but fashion_mnist_small has 10 classes" in error(wrong_classes)
  # plain.json intact but the weights gone: found when a fresh run loads them.
  no_vars = write_plain(tmp_path / "novars", [*layers, Dense(4, 10)], (32, 32, 1))
  shutil.rmtree(os.path.join(no_vars, "variables"))
  assert "has no variables/ directory" in error(no_vars)
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "0")


def test_cli_reports_a_missing_init_from_in_one_line(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      "train.py",
      "--config",
      "configs/demo.py",
      f"--config.init_from={tmp_path / 'missing'}",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert out.returncode != 0
  assert "error: config.init_from: " in out.stderr and "Traceback" not in out.stderr
