"""The training loop: sharding, multi-process, resume, divergence, bad names, the CLI."""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from train_config import tiny_config

from rmjax import compare, data, evaluation, export, run, train
from rmjax.mesh import Mesh

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def flat_params(state):
  tree = {"params": state.params, "batch_stats": state.batch_stats}
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def run_worker(*args, timeout=600):
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.Popen(
    [sys.executable, os.path.join(HERE, "train_worker.py"), *map(str, args)],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def assert_same_arrays(a, b, atol):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
  """Runs trained in an 8-device process: `work1` on one device, `work8` on all eight."""
  path = tmp_path_factory.mktemp("sharded")
  proc = run_worker("sharded", path)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  return path


def test_eight_devices_train_like_one(sharded_runs):
  one = dict(np.load(sharded_runs / "devices1.npz"))
  eight = dict(np.load(sharded_runs / "devices8.npz"))
  # BatchNorm statistics included: under jit they are computed over the global batch.
  assert any("batch_stats" in k for k in one)
  assert_same_arrays(one, eight, atol=1e-5)


def test_checkpoints_convert_and_evaluate_on_any_device_count(sharded_runs, tmp_path):
  """Train on a GPU node, convert on a laptop: 8 -> 2 and 1 -> 2 devices in a worker, 8 -> this
  process (one device, unless XLA_FLAGS says otherwise)."""
  runs = [sharded_runs / "work8", sharded_runs / "work1"]
  proc = run_worker("load", tmp_path, 2, *runs)
  loaded = run.load_run(str(runs[0]))  # meanwhile, here
  export.export_plain(loaded, str(tmp_path / "plain_here"))  # verified against `loaded`
  (here,) = evaluation.evaluate_paths([str(runs[0])], batch_size=500)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  trained = [dict(np.load(sharded_runs / f"devices{n}.npz")) for n in (8, 1)]
  flat = traverse_util.flatten_dict(jax.device_get(loaded.variables), sep="/")
  assert_same_arrays(trained[0], {k: np.asarray(v) for k, v in flat.items()}, atol=0)
  for i, want in enumerate(trained):
    assert_same_arrays(want, dict(np.load(tmp_path / f"loaded{i}.npz")), atol=0)
    assert os.path.exists(tmp_path / f"plain{i}" / "SHA256SUMS")
  with open(tmp_path / "rows0.json") as f:
    (there,) = json.load(f)
  assert here["examples"] == there["examples"] == 2000 and here["top1"] == there["top1"]


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_with_jax_distributed(tmp_path):
  port = free_port()
  procs = [run_worker("distributed", tmp_path, i, 2, port) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs, strict=True):
    assert p.returncode == 0, out
  a = dict(np.load(tmp_path / "process0.npz"))
  b = dict(np.load(tmp_path / "process1.npz"))
  assert_same_arrays(a, b, atol=0)


def interrupt_after(n, batches):
  for i, batch in enumerate(batches):
    if i == n:
      raise KeyboardInterrupt
    yield batch


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
  config = tiny_config(num_train_steps=5, checkpoint_every_steps=100)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))

  real = data.train_batches
  monkeypatch.setattr(data, "train_batches", lambda *a, **k: interrupt_after(3, real(*a, **k)))
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
  # Ctrl-C saved the state of step 3 even though 3 is no checkpoint step.
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["3"]
  monkeypatch.setattr(data, "train_batches", real)
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert int(resumed.state.step) == 5
  assert_same_arrays(flat_params(straight.state), flat_params(resumed.state), atol=1e-6)
  assert int(straight.state.rng[0]) == int(resumed.state.rng[0])
  # A finished run started again trains nothing and still reports its evaluation.
  again = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert int(again.state.step) == 5
  assert again.metrics["eval_top1"] == resumed.metrics["eval_top1"]
  moved = flat_params(straight.state)
  assert os.path.exists(tmp_path / "straight" / "metrics.json")
  assert any(np.abs(v).max() > 0 for v in moved.values())


def poison_from(n, batches):
  for i, batch in enumerate(batches):
    if i >= n:
      batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
    yield batch


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  config = tiny_config(num_train_steps=8, checkpoint_every_steps=2)
  real = data.train_batches
  monkeypatch.setattr(data, "train_batches", lambda *a, **k: poison_from(4, real(*a, **k)))
  with pytest.raises(
    train.TrainingDivergedError,
    match=r"at step 5; the last good checkpoint "
    r"\(step 4\) is kept",
  ):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_unknown_model_and_dataset_names(tmp_path):
  with pytest.raises(ValueError, match="unknown model 'resnet7'.*resnet20"):
    train.train_and_evaluate(tiny_config(model="resnet7"), str(tmp_path))
  with pytest.raises(ValueError, match="unknown dataset 'mnist3'.*fashion_mnist_small"):
    train.train_and_evaluate(tiny_config(dataset="mnist3"), str(tmp_path))


def test_cli_help_and_bad_config_value(tmp_path):
  help_text = subprocess.run(
    [sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True
  ).stdout
  for flag in ("--config", "--workdir", "--distributed", "--coordinator_address"):
    assert flag in help_text
  bad = subprocess.run(
    [
      sys.executable,
      "train.py",
      "--config",
      "configs/demo.py",
      "--config.dataset=nope",
      f"--workdir={tmp_path}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert bad.returncode != 0
  assert "error: unknown dataset 'nope'" in bad.stderr
  assert "Traceback" not in bad.stderr
  unknown_key = subprocess.run(
    [sys.executable, "train.py", "--config", "configs/demo.py", "--config.model_kwargs.depth=3"],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert unknown_key.returncode == 2
  assert "error: the config has no key 'depth' to override" in unknown_key.stderr
  assert "Traceback" not in unknown_key.stderr


def test_trained_model_converts_to_an_equal_plain_network(tmp_path):
  config = tiny_config(num_train_steps=4)
  result = train.train_and_evaluate(config, str(tmp_path))
  variables = {"params": result.state.params, "batch_stats": result.state.batch_stats}

  def make_batches():
    return data.eval_batches(config.dataset, batch_size=256)

  rows = compare.compare_with_plain(result.model, variables, make_batches, Mesh.create())
  original, plain = rows
  assert original["top1"] == plain["top1"] == result.metrics["eval_top1"]
  assert plain["max_abs_logit_diff"] < 1e-4
  assert plain["params"] > original["params"]
  table = compare.format_table(rows)
  assert table.count("\n") == 3 and "PlainNet (RM)" in table


def test_sparsity_adds_l1_on_batchnorm_scales_only():
  config = tiny_config(sparsity=0.1, weight_decay=0.0, momentum=0.0)
  tx = train.create_optimizer(config, optax.constant_schedule(1.0))
  params = {
    "layers_1": {"scale": jnp.array([0.5, -0.2, 0.0]), "bias": jnp.ones(3)},
    "layers_0": {"kernel": jnp.ones((1, 1, 2, 3))},
  }
  grads = {
    "layers_1": {"scale": jnp.zeros(3), "bias": jnp.zeros(3)},
    "layers_0": {"kernel": jnp.zeros((1, 1, 2, 3))},
  }
  updates, _ = tx.update(grads, tx.init(params), params)
  # SGD step of the L1 subgradient: scales move towards 0, nothing else moves.
  np.testing.assert_allclose(updates["layers_1"]["scale"], [-0.1, 0.1, 0.0], atol=1e-7)
  np.testing.assert_array_equal(updates["layers_1"]["bias"], 0.0)
  np.testing.assert_array_equal(updates["layers_0"]["kernel"], 0.0)
  with pytest.raises(ValueError, match="config.sparsity must be >= 0"):
    train.create_optimizer(tiny_config(sparsity=-1.0), optax.constant_schedule(1.0))


@pytest.mark.parametrize(
  "args, message",
  [
    (["--config", "configs/nope.py"], "error: the config file configs/nope.py does not exist"),
    (
      ["--config", "configs/demo.py", "--config.num_epoch=1"],
      "error: the config has no key 'num_epoch' to override (Did you mean \"num_epochs\"",
    ),
    (
      ["--config", "configs/demo.py", "--config.batch_size=3"],
      "error: config.batch_size 3 must be divisible by the 2 devices",
    ),
  ],
)
def test_each_bad_train_input_is_one_line(tmp_path, args, message):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  result = subprocess.run(
    [sys.executable, "train.py", *args, f"--workdir={tmp_path / 'run'}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(message), lines[0]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_config_help_lists_keys_with_defaults_and_comments():
  result = subprocess.run(
    [sys.executable, "train.py", "--config_help"], cwd=ROOT, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr
  out = result.stdout
  sys.path.insert(0, ROOT)
  from configs import default

  for key, value in default.get_config().items():
    assert f"  {key} = " in out
    if not hasattr(value, "to_dict"):
      assert f"  {key} = {value!r}" in out
  assert "> 0 overrides num_epochs" in out  # the comment beside num_train_steps
  assert "Network slimming (Sec. 4.2, 5.1)" in out  # the comment above sparsity


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"batch_size": 0}, "config.batch_size must be a positive integer, got 0"),
    ({"learning_rate": -1.0}, "config.learning_rate must be > 0, got -1.0"),
    ({"learning_rate": 0.0}, "config.learning_rate must be > 0, got 0.0"),
    ({"momentum": 1.0}, "config.momentum must be in [0, 1), got 1.0"),
    ({"num_epochs": 0.0}, "config.num_epochs must be > 0 (or set num_train_steps > 0)"),
    ({"checkpoint_every_steps": 0}, "config.checkpoint_every_steps must be a positive integer"),
  ],
)
def test_bad_config_values_are_refused_before_anything_runs(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert not os.listdir(tmp_path)
  train.check_config(tiny_config(num_epochs=0.0, num_train_steps=5))  # steps win over epochs
