"""The optimiser of every run: SGD with momentum and weight decay, a learning-rate schedule,
and network slimming's L1 penalty on BN scales (Sec. 4.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(config, steps_per_epoch: int, total_steps: int):
  """`step`: lr x `lr_decay_factor` every `lr_decay_epochs` (the paper's CIFAR recipe, Sec. 3);
  `cosine`: linear warm-up then cosine decay (the usual ImageNet recipe)."""
  lr = config.learning_rate
  warmup = int(config.warmup_epochs * steps_per_epoch)
  if config.lr_schedule == "step":
    every = int(config.lr_decay_epochs * steps_per_epoch)
    boundaries = {k: config.lr_decay_factor for k in range(every, total_steps, every)}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif config.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  elif config.lr_schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(
      f"unknown lr_schedule {config.lr_schedule!r}; expected 'step', 'cosine' or 'constant'"
    )
  if not warmup:
    return main
  ramp = optax.linear_schedule(0.0, lr, warmup)
  return optax.join_schedules([ramp, lambda s: main(s)], [warmup])


def batchnorm_l1(strength: float) -> optax.GradientTransformation:
  """Adds the subgradient of `strength * sum |scale|` over every BatchNorm scale to the
  gradient: network slimming's sparsity training (Liu et al. 2017; the paper's Sec. 4.2, 5.1),
  which drives unimportant channels' scales to zero so that `transforms.prune` can drop them."""

  def update(updates, state, params):
    if params is None:
      raise ValueError("batchnorm_l1 needs the params (optax passes them in chain.update)")

    def add(path, g, w):
      return g + strength * jnp.sign(w) if path[-1].key == "scale" else g

    return jax.tree_util.tree_map_with_path(add, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def create_optimizer(config, schedule):
  """SGD with momentum and L2 weight decay on every parameter, as PyTorch's SGD does; with
  `config.sparsity > 0` also an L1 penalty on BN scales (network slimming, `batchnorm_l1`)."""
  sparsity = config.sparsity
  if sparsity < 0:
    raise ValueError(f"config.sparsity must be >= 0, got {sparsity}")
  return optax.chain(
    *([batchnorm_l1(sparsity)] if sparsity else []),
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
  )
