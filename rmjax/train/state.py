"""The training state and one SGD step on a global batch.

The state is replicated over the mesh and the batch sharded (`rmjax.mesh`); `train_step` is what
`rmjax.train.loop` jits, with the state donated.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw key data (uint32): orbax stores it as a plain array


def init_state(model, tx, rng, input_shape, variables=None) -> TrainState:
  """A step-0 state: `model.init`'s variables, or the given `variables` (`config.init_from`)."""
  init_rng, state_rng = jax.random.split(rng)
  if variables is None:
    variables = model.init(init_rng, jnp.zeros((1, *input_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
    rng=jax.random.key_data(state_rng),
  )


def train_step(state: TrainState, batch, *, model, tx, schedule, num_classes, label_smoothing):
  """One SGD step on a global batch; returns the new state and scalar metrics."""

  def loss_fn(params):
    logits, updates = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    # A deploy-form plain network (`init_from`) has no BatchNorm and so no batch_stats.
    return loss, (logits, updates.get("batch_stats", {}))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics = {
    "loss": loss,
    "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
    "learning_rate": schedule(state.step),
    "grad_norm": optax.tree.norm(grads),
  }
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    batch_stats=batch_stats,
    opt_state=opt_state,
  )
  return new_state, metrics


def check_finite(step: int, metrics: dict[str, float], last_saved: int | None) -> None:
  if all(np.isfinite(metrics[k]) for k in ("loss", "grad_norm")):
    return
  kept = (
    f"the last good checkpoint (step {last_saved}) is kept"
    if last_saved is not None
    else "no checkpoint had been saved yet"
  )
  raise TrainingDivergedError(
    f"training diverged: the loss is {metrics['loss']} (gradient norm {metrics['grad_norm']}) "
    f"at step {step}; {kept}. Lower config.learning_rate or check the input data."
  )
