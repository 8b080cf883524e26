"""A training config small enough for tests: a 3-block ResNet on the embedded dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import default  # noqa: E402


def tiny_config(**overrides):
  config = default.get_config()
  config.model = "resnet20"
  config.model_kwargs.stage_sizes = (1, 1, 1)
  config.model_kwargs.widths = (4, 8, 8)
  config.model_kwargs.stem_width = 4
  config.dataset = "fashion_mnist_small"
  config.batch_size = 16
  config.learning_rate = 0.05
  config.lr_schedule = "constant"
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.eval_every_epochs = 1000.0  # evaluate once, at the end
  for k, v in overrides.items():
    config[k] = v
  return config
