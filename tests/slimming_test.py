"""The pruning pipeline (Fig. 4, Fig. 7 in miniature): slim.py end to end on a tiny ResNet, and
its refusals of configs that cannot run it."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest
from train_config import tiny_config

from rmjax import run, slimming, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_PIPELINE = """
from configs import slim_resnet20


def get_config():
  config = slim_resnet20.get_config()
  config.model_kwargs.stage_sizes = (1, 1, 1)
  config.model_kwargs.widths = (4, 8, 8)
  config.model_kwargs.stem_width = 4
  config.batch_size = 16
  config.num_train_steps = 4
  config.checkpoint_every_steps = 4
  config.log_every_steps = 2
  config.prune.thresholds = (1e9,)  # everything below: one channel per prunable conv stays
  config.prune.finetune_epochs = 0.0064  # 4 steps of 625 per epoch at batch 16
  config.prune.speed_batch_size = 16
  return config
"""


def test_slim_runs_the_whole_pipeline(tmp_path):
  config_file = tmp_path / "tiny_slim.py"
  config_file.write_text(TINY_PIPELINE)
  workdir, report_dir = tmp_path / "run", tmp_path / "report"
  result = subprocess.run(
    [
      sys.executable,
      "slim.py",
      f"--config={config_file}",
      f"--workdir={workdir}",
      f"--report_dir={report_dir}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| network | threshold | params |" in result.stdout
  for name in ("sparse", "plain", "rmnet_t1e+09/pruned", "rmnet_t1e+09/tuned", "resnet_t1e+09"):
    assert os.path.isdir(workdir / name), name
  rows = json.loads((report_dir / "pruning.json").read_text())
  by = {(r["network"], r["threshold"]): r for r in rows}
  assert sorted(by) == [("RMNet", 0.0), ("RMNet", 1e9), ("ResNet", 0.0), ("ResNet", 1e9)]
  # RM is exact: the unpruned RMNet is the sparse ResNet, accuracy for accuracy.
  assert by["RMNet", 0.0]["top1"] == by["ResNet", 0.0]["top1"]
  # The plain network can lose every channel but one per conv; the ResNet only inner ones.
  assert by["RMNet", 1e9]["params"] < by["ResNet", 1e9]["params"] < by["ResNet", 0.0]["params"]
  assert by["RMNet", 1e9]["params_removed"] > by["ResNet", 1e9]["params_removed"] > 0
  assert by["RMNet", 1e9]["macs"] < by["RMNet", 0.0]["macs"]
  assert all(r["imgs_per_sec"] > 0 and 0 <= r["top1"] <= 1 for r in rows)
  assert by["RMNet", 1e9]["top1_pruned"] is not None  # evaluated before fine-tuning
  assert (report_dir / "pruning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  markdown = (report_dir / "pruning.md").read_text()
  assert "| RMNet | 1e+09 |" in markdown and "![" in markdown
  assert not [p for p in os.listdir(report_dir) if "tmp" in p]


def pipeline_config(**changes):
  config = tiny_config(sparsity=1e-3)
  config.model_kwargs.shortcut_bn = True
  config.prune = ml_collections.ConfigDict(
    dict(thresholds=(0.1,), finetune_epochs=1.0, finetune_learning_rate=0.01)
  )
  for key, value in changes.items():
    config[key] = value
  return config


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(prune=None), "no `prune` section"),
    (dict(sparsity=0.0), "needs an L1 penalty"),
    (dict(model="mobilenetv2"), "not a ResNet"),
    (dict(model_kwargs=ml_collections.ConfigDict(dict(shortcut_bn=False))), "shortcut_bn"),
  ],
)
def test_configs_that_cannot_run_the_pipeline_are_refused(changes, message):
  slimming.check_config(pipeline_config())  # the base is fine
  with pytest.raises(ValueError, match=message):
    slimming.check_config(pipeline_config(**changes))


def test_refuses_thresholds_that_are_not_positive():
  config = pipeline_config()
  config.prune.thresholds = (0.1, 0.0)
  with pytest.raises(ValueError, match="must be positive"):
    slimming.check_config(config)


def test_finetune_config_drops_the_penalty_and_keeps_the_rest():
  ft = slimming.finetune_config(pipeline_config(), inner_widths=[[2], [3], [4]])
  assert ft.sparsity == 0 and ft.num_epochs == 1.0 and ft.learning_rate == 0.01
  assert "prune" not in ft and ft.model_kwargs.shortcut_bn
  model = run.create_model(ft, num_classes=10)
  assert model.inner_widths == ((2,), (3,), (4,))  # JSON-style lists become hashable tuples


def test_init_variables_that_do_not_fit_are_refused(tmp_path):
  with pytest.raises(
    ValueError, match="(?s)init_variables do not fit resnet20: .*missing params/layer1_0"
  ):
    train.train_and_evaluate(
      tiny_config(num_train_steps=1), str(tmp_path), init_variables={"params": {}}
    )
