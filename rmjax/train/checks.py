"""The config values a training run accepts, refused up front with one line each.

A bad value would otherwise surface minutes later as a traceback (`batch_size=0`: a
ZeroDivisionError) or, worse, as a run that trains to nonsense (`learning_rate=-1`: loss 3e8).

  >>> check_config(config, devices=8, processes=2)   # ValueError naming the key and the rule
"""

from __future__ import annotations

import math


def _number(config, key: str):
  value = config[key]
  if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
    raise ValueError(f"config.{key} must be a finite number, got {value!r}")
  return value


def _rule(config, key: str, ok, rule: str) -> None:
  value = _number(config, key)
  if not ok(value):
    raise ValueError(f"config.{key} must be {rule}, got {value!r}")


def check_config(config, *, devices: int = 1, processes: int = 1) -> None:
  """ValueError for the first config value a run cannot train with (see the module doc).

  `devices` and `processes`: the global batch must divide over both.
  """
  batch = config.batch_size
  if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
    raise ValueError(f"config.batch_size must be a positive integer, got {batch!r}")
  for count, what in ((processes, "processes"), (devices, "devices")):
    if batch % count:
      raise ValueError(
        f"config.batch_size {batch} must be divisible by the {count} {what} (each gets an equal "
        "share of every global batch)"
      )
  _rule(config, "learning_rate", lambda v: v > 0, "> 0")
  _rule(config, "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
  _rule(config, "weight_decay", lambda v: v >= 0, ">= 0")
  _rule(config, "label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)")
  _rule(config, "warmup_epochs", lambda v: v >= 0, ">= 0")
  # (sparsity and lr_schedule are checked where they are used: `optim`.)
  if config.lr_schedule == "step":
    _rule(config, "lr_decay_epochs", lambda v: v > 0, "> 0 (the step schedule's period)")
  if not (config.num_train_steps and config.num_train_steps > 0):
    _rule(config, "num_epochs", lambda v: v > 0, "> 0 (or set num_train_steps > 0)")
  for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    _rule(config, key, lambda v: v >= 1 and float(v).is_integer(), "a positive integer")
  _rule(config, "eval_every_epochs", lambda v: v > 0, "> 0")
  _rule(config, "init_bn_batches", lambda v: v >= 0 and float(v).is_integer(), ">= 0")
