"""convert.py / evaluate.py and rmjax.export: checkpoint -> verified PLAIN directory, and every
way that can fail."""

import json
import logging
import os
import shutil
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from train_config import tiny_config

import rmjax
from rmjax import checkpoint, data, evaluation, export, plain_io, run, train
from rmjax.testing import array_data_files, eval_logits, flip_byte

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A trained workdir: a few hundred steps of the tiny ResNet on the embedded dataset."""
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(tiny_config(num_train_steps=200, checkpoint_every_steps=100), workdir)
  return workdir


def copy_run(run_dir, tmp_path):
  target = str(tmp_path / "run")
  shutil.copytree(run_dir, target)
  return target


@pytest.mark.parametrize("keep_bn", [False, True], ids=["deploy", "keep_bn"])
def test_export_then_load_gives_the_same_logits(run_dir, tmp_path, keep_bn):
  loaded = run.load_run(run_dir)
  assert loaded.step == 200
  report = export.export_plain(loaded, str(tmp_path / "plain"), keep_bn=keep_bn)
  plain, variables = rmjax.load_plain(str(tmp_path / "plain"))
  assert plain == report["plain"]
  x = jax.random.normal(jax.random.key(3), (4, *loaded.input_shape))
  chex.assert_trees_all_close(
    eval_logits(plain, variables, x),
    eval_logits(loaded.model, loaded.variables, x),
    atol=1e-4,
    rtol=0,
  )
  assert report["checks"]["random"]["top1_agreement"] == 1.0
  arch = plain_io.read_arch(str(tmp_path / "plain"))
  assert arch["source"]["step"] == 200 and arch["source"]["keep_bn"] == keep_bn
  has_bn = any(layer["type"] == "BatchNorm" for layer in arch["layers"])
  assert has_bn == keep_bn


def test_trained_network_and_plain_make_the_same_predictions(run_dir, tmp_path):
  """End to end on the embedded dataset: every test prediction is unchanged by conversion."""
  loaded = run.load_run(os.path.join(run_dir, "checkpoints", "200"))
  export.export_plain(loaded, str(tmp_path / "plain"))
  plain, plain_vars = rmjax.load_plain(str(tmp_path / "plain"))
  original = jax.jit(evaluation.eval_apply_fn(loaded.model))
  converted = jax.jit(plain.apply)
  same = total = 0
  for batch in data.eval_batches("fashion_mnist_small", batch_size=500):
    real = batch["mask"] > 0
    a = np.asarray(original(loaded.variables, batch["image"])).argmax(-1)[real]
    b = np.asarray(converted(plain_vars, batch["image"])).argmax(-1)[real]
    same, total = same + int((a == b).sum()), total + int(real.sum())
  assert total == 2000 and same == total
  rows = evaluation.evaluate_paths([run_dir, str(tmp_path / "plain")], batch_size=500)
  assert rows[0]["top1"] == rows[1]["top1"] > 0.2  # above chance (0.1): it learned something
  assert rows[0]["top5"] == rows[1]["top5"]


def test_cli_converts_and_evaluates(run_dir, tmp_path):
  plain_dir = str(tmp_path / "plain")
  result = subprocess.run(
    [
      sys.executable,
      "convert.py",
      run_dir,
      plain_dir,
      "--eval_dataset=fashion_mnist_small",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "max |diff|" in result.stdout and "fashion_mnist_small" in result.stdout
  assert f"wrote {plain_dir}" in result.stdout
  again = subprocess.run(
    [sys.executable, "convert.py", run_dir, plain_dir], cwd=ROOT, capture_output=True, text=True
  )
  assert again.returncode == 1
  assert "already exists; pass --overwrite" in again.stderr
  assert "Traceback" not in again.stderr
  evaluated = subprocess.run(
    [sys.executable, "evaluate.py", run_dir, plain_dir], cwd=ROOT, capture_output=True, text=True
  )
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  rows = evaluated.stdout.strip().splitlines()[1:]
  assert len(rows) == 2
  assert rows[0].split()[-3:] == rows[1].split()[-3:]  # same top-1, top-5, examples


# --- errors: one paragraph each, nothing written ----------------------------------------------


def test_missing_and_empty_checkpoint(tmp_path):
  with pytest.raises(run.RunError, match="does not exist"):
    run.load_run(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(run.RunError, match="is not a training workdir"):
    run.load_run(str(tmp_path / "empty"))
  (tmp_path / "fresh").mkdir()
  (tmp_path / "fresh" / "config.json").write_text(tiny_config().to_json())
  with pytest.raises(run.RunError, match="has no checkpoint yet"):
    run.load_run(str(tmp_path / "fresh"))
  assert os.listdir(tmp_path / "fresh") == ["config.json"]  # reading made no checkpoints/


def test_corrupt_checkpoint(run_dir, tmp_path, monkeypatch):
  workdir = copy_run(run_dir, tmp_path)
  step_dir = os.path.join(workdir, "checkpoints", "200")
  for path in array_data_files(step_dir):
    with open(path, "r+b") as f:
      f.truncate(max(os.path.getsize(path) // 3, 1))
  reads = []
  orbax_restore = ocp.StandardCheckpointHandler.restore
  monkeypatch.setattr(
    ocp.StandardCheckpointHandler,
    "restore",
    lambda self, *args, **kwargs: reads.append(args) or orbax_restore(self, *args, **kwargs),
  )
  with pytest.raises(run.RunError, match=f"the checkpoint {step_dir} cannot be restored: .* is "):
    run.load_run(workdir)
  # Refused before orbax reads a byte: orbax's reads of a damaged checkpoint failed with reads
  # left pending, each printed later as a 75-line "Exception ignored in: <coroutine ...>".
  assert reads == []


def test_flipped_bytes_in_a_checkpoint_are_refused(run_dir, tmp_path):
  workdir = copy_run(run_dir, tmp_path)
  files = array_data_files(os.path.join(workdir, "checkpoints", "200"))
  for data_file in files[-2:]:
    size = os.path.getsize(data_file)
    for offset in sorted({0, size // 5, size // 2, 4 * size // 5, size - 1}):
      flip_byte(data_file, offset)
      with pytest.raises(run.RunError, match=f"{data_file} is damaged") as e:
        run.load_run(workdir)
      assert "\n" not in str(e.value) and "Delete" in str(e.value)
      flip_byte(data_file, offset)
  flip_byte(files[-1], os.path.getsize(files[-1]) // 2)
  plain_dir = str(tmp_path / "plain")
  procs = [
    subprocess.Popen(
      [sys.executable, script, workdir, *extra],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for script, extra in (("convert.py", [plain_dir]), ("evaluate.py", []))
  ]
  for proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    error = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and f"{files[-1]} is damaged" in error[0], err
    assert "Traceback" not in err
  assert sorted(os.listdir(tmp_path)) == ["run"]  # no PLAIN, nothing half-written


def test_resuming_refuses_a_damaged_checkpoint(run_dir, tmp_path):
  """The training loop checks the digest too, and says which step to delete."""
  workdir = copy_run(run_dir, tmp_path)
  data_file = array_data_files(os.path.join(workdir, "checkpoints", "200"))[-1]
  flip_byte(data_file, os.path.getsize(data_file) // 3)
  config = tiny_config(num_train_steps=300, checkpoint_every_steps=100)
  with pytest.raises(ValueError, match=f"{data_file} is damaged.*steps \\[100\\] remain"):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["100", "200"]


def test_non_finite_weights_are_named_before_any_conversion(run_dir, tmp_path):
  workdir = copy_run(run_dir, tmp_path)
  mngr = checkpoint.manager(workdir)
  state = checkpoint.restore_on_one_device(mngr, 200)
  kernel = np.array(state["params"]["head"]["fc"]["kernel"])
  kernel[0, :3] = np.nan
  state["params"]["head"]["fc"]["kernel"] = kernel
  checkpoint.save(mngr, 201, state)  # a digest of NaN: only the values are wrong
  mngr.wait_until_finished()
  mngr.close()
  message = r"checkpoints/201 holds non-finite weights .* params/head/fc/kernel \(3 NaN of 80\)"
  with pytest.raises(run.RunError, match=message):
    run.load_run(workdir)
  with pytest.raises(run.RunError, match=message):
    evaluation.evaluate_paths([workdir])


def test_a_checkpoint_without_digest_loads_with_a_warning(run_dir, tmp_path, caplog):
  workdir = copy_run(run_dir, tmp_path)
  os.remove(os.path.join(workdir, "checkpoints", "200", "default", "SHA256SUMS"))
  with caplog.at_level(logging.WARNING):
    old = run.load_run(workdir)
  assert "has no SHA-256 digest" in caplog.text
  chex.assert_trees_all_equal(old.variables, run.load_run(run_dir).variables)


def test_checkpoint_that_does_not_match_its_config(run_dir, tmp_path):
  workdir = copy_run(run_dir, tmp_path)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    config = json.load(f)
  config["model_kwargs"]["widths"] = [4, 8, 16]
  with open(path, "w") as f:
    json.dump(config, f)
  with pytest.raises(run.RunError, match="does not match the model") as e:
    run.load_run(workdir)
  assert "expected" in str(e.value)  # check_variables names the paths and shapes


class NotConvertible(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(x.mean(axis=(1, 2)))


def test_architecture_without_converter(run_dir, tmp_path):
  loaded = run.load_run(run_dir)
  model = NotConvertible()
  variables = model.init(jax.random.key(0), jnp.zeros((1, *loaded.input_shape)))
  bad = run.Run(loaded.workdir, loaded.step, loaded.config, model, variables, loaded.input_shape)
  with pytest.raises(export.ExportError, match="cannot be converted.*no converter"):
    export.export_plain(bad, str(tmp_path / "plain"))
  assert not os.path.exists(tmp_path / "plain")


def test_unwritable_or_existing_plain(run_dir, tmp_path):
  loaded = run.load_run(run_dir)
  (tmp_path / "a_file").write_text("")
  with pytest.raises(export.ExportError, match="not a writable directory"):
    export.export_plain(loaded, str(tmp_path / "a_file" / "plain"))
  (tmp_path / "exists").mkdir()
  with pytest.raises(export.ExportError, match="already exists; pass --overwrite"):
    export.export_plain(loaded, str(tmp_path / "exists"))
  export.export_plain(loaded, str(tmp_path / "exists"), overwrite=True)
  rmjax.load_plain(str(tmp_path / "exists"))
  assert sorted(os.listdir(tmp_path)) == ["a_file", "exists"]  # no temporary leftovers


def test_too_strict_tolerance_writes_nothing(run_dir, tmp_path):
  loaded = run.load_run(run_dir)
  with pytest.raises(export.ExportError, match="nothing was written"):
    export.export_plain(loaded, str(tmp_path / "plain"), tolerance=0.0)
  assert os.listdir(tmp_path) == []


def test_failed_write_leaves_nothing_behind(run_dir, tmp_path, monkeypatch):
  loaded = run.load_run(run_dir)

  def fail(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(plain_io.ocp.StandardCheckpointer, "save", fail)
  with pytest.raises(export.ExportError, match="disk full"):
    export.export_plain(loaded, str(tmp_path / "plain"))
  assert os.listdir(tmp_path) == []


def test_damaged_plain_directory_is_named(run_dir, tmp_path):
  loaded = run.load_run(run_dir)
  plain_dir = str(tmp_path / "plain")
  export.export_plain(loaded, plain_dir)
  arch_file = os.path.join(plain_dir, "plain.json")
  arch = json.loads(open(arch_file).read())
  arch["layers"][0]["out_features"] += 1
  with open(arch_file, "w") as f:
    json.dump(arch, f)
  with pytest.raises(plain_io.PlainFormatError, match=f"{arch_file} is damaged"):
    rmjax.load_plain(plain_dir)
  os.remove(os.path.join(plain_dir, "SHA256SUMS"))  # as written before digests: shapes checked
  with pytest.raises(plain_io.PlainFormatError, match="cannot be restored"):
    rmjax.load_plain(plain_dir)
  shutil.rmtree(os.path.join(plain_dir, "variables"))
  with pytest.raises(plain_io.PlainFormatError, match="incomplete"):
    rmjax.load_plain(plain_dir)
  with pytest.raises(plain_io.PlainFormatError, match="no plain.json"):
    rmjax.load_plain(str(tmp_path))


def test_cli_errors_are_one_paragraph(tmp_path):
  result = subprocess.run(
    [sys.executable, "convert.py", str(tmp_path / "nope"), str(tmp_path / "plain")],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 1
  assert result.stderr.startswith("error: ") and "does not exist" in result.stderr
  assert "Traceback" not in result.stderr
  usage = subprocess.run(
    [sys.executable, "convert.py", "only_one"], cwd=ROOT, capture_output=True, text=True
  )
  assert usage.returncode == 2 and "usage: python convert.py CKPT PLAIN" in usage.stderr


def test_fine_tuned_run_converts_to_the_deploy_form(run_dir, tmp_path):
  """Fig. 4's pipeline end: convert (keep_bn) -> fine-tune from PLAIN -> convert again, which
  folds the fine-tuned network's BNs."""
  loaded = run.load_run(run_dir)
  export.export_plain(loaded, str(tmp_path / "plain_bn"), keep_bn=True)
  config = tiny_config(num_train_steps=2, init_from=str(tmp_path / "plain_bn"), init_bn_batches=1)
  train.train_and_evaluate(config, str(tmp_path / "finetuned"))
  tuned = run.load_run(str(tmp_path / "finetuned"))
  assert isinstance(tuned.model, rmjax.models.PlainNet)
  report = export.export_plain(tuned, str(tmp_path / "deploy"))
  deployed, deployed_vars = rmjax.load_plain(str(tmp_path / "deploy"))
  assert not any(isinstance(layer, rmjax.models.BatchNorm) for layer in deployed.layers)
  assert len(deployed.layers) < len(tuned.model.layers)
  x = jax.random.normal(jax.random.key(4), (4, *loaded.input_shape))
  chex.assert_trees_all_close(
    eval_logits(deployed, deployed_vars, x),
    eval_logits(tuned.model, tuned.variables, x),
    atol=1e-4,
    rtol=0,
  )
  assert report["checks"]["random"]["top1_agreement"] == 1.0
