"""Training-step speed (`bench.py --train_steps`): one SGD step of each trainable network, in
rmjax and, where torch is there, in its PyTorch twin (`rmjax.bench.torch_timing`).

The step is what training does: the forward pass in training mode (BN on batch statistics,
running averages updated), cross-entropy on random labels, gradients, SGD with momentum
`MOMENTUM` and weight decay `WEIGHT_DECAY` (optax's `add_decayed_weights` then `sgd`, which is
`torch.optim.SGD(momentum=, weight_decay=)`). In rmjax it is one `jax.jit` with the parameters,
BN statistics and optimizer state donated, run back to back and waited for at the end of each
repeat, with the protocol of `rmjax.bench.measure`, taking turns with PyTorch repeat by repeat. The
first step (before any update) is run apart: its loss, in both frameworks, shows that the two
start from the same weights.

`compute_dtype="bfloat16"` is mixed precision, the peer of PyTorch's AMP (`torch.autocast`):
float32 parameters, BN statistics and optimizer state (the master weights), the forward and
backward passes on bfloat16 casts of parameters and inputs, the loss in float32.

  >>> rows = run(suites.build(["tiny"]), batch_sizes=[8], protocol=measure.QUICK)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmjax.bench import torch_timing, torch_twins
from rmjax.bench.measure import SPEED_KEYS, images, input_dtype, log, speeds, time_batches
from rmjax.bench.suites import Network, cast
from rmjax.models.plain import PlainNet

LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def trainable(networks: Sequence[Network]) -> list[Network]:
  """The networks to time a training step of, each once, in order: every network that is not a
  plain (converted) one, and the training forms plain networks were converted from (RepVGG's,
  which the benchmark does not time for inference)."""
  out: dict[int, Network] = {}
  for net in networks:
    for candidate in (net, net.reference):
      model = None if candidate is None else candidate.model
      if model is not None and not isinstance(model, PlainNet):
        out.setdefault(id(candidate), candidate)
  return list(out.values())


def labels(batch: int, num_classes: int, seed: int = 0) -> np.ndarray:
  """The benchmark's random labels, int32."""
  return np.random.default_rng(seed).integers(0, num_classes, batch).astype(np.int32)


def num_classes(net: Network) -> int:
  x = jax.ShapeDtypeStruct((1, net.image_size, net.image_size, 3), jnp.float32)
  return jax.eval_shape(net.apply, net.variables, x).shape[-1]


def optimizer() -> optax.GradientTransformation:
  return optax.chain(
    optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
  )


def sgd_step(model, tx: optax.GradientTransformation, compute_dtype: str = "float32"):
  """`step(params, batch_stats, opt_state, x, labels) -> (params, batch_stats, opt_state,
  loss)`, jitted, its first three arguments donated; the forward and backward passes in
  `compute_dtype` (parameters and inputs cast to it; the gradients come back to float32)."""

  def step(params, batch_stats, opt_state, x, y):
    def loss_fn(params):
      logits, updates = model.apply(
        {"params": cast(params, compute_dtype), "batch_stats": batch_stats},
        x.astype(compute_dtype),
        train=True,
        mutable=["batch_stats"],
      )
      logits = logits.astype(jnp.float32)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1, 2))


def measure(
  net: Network,
  batch: int,
  protocol,
  beside: Sequence[Callable[[int], object]] = (),
  compute_dtype: str = "float32",
) -> dict:
  """rmjax's training step of `net` at `batch` in `compute_dtype`: compile time, imgs/s
  (median, min, max, repeats) and the first step's loss. `beside`: other `run(n)`s timed in
  turn with it (`measure.time_batches`), their seconds per batch under "beside_seconds"."""
  x = images(batch, net.image_size).astype(input_dtype(net))
  y = jnp.asarray(labels(batch, num_classes(net)))
  tx = optimizer()
  # Copies: the step donates (deletes) its inputs, and the network's variables live on.
  params = jax.tree.map(jnp.copy, net.variables["params"])
  state = (params, jax.tree.map(jnp.copy, net.variables["batch_stats"]), tx.init(params))
  start = time.perf_counter()
  compiled = sgd_step(net.model, tx, compute_dtype).lower(*state, x, y).compile()
  compile_s = time.perf_counter() - start
  *state, loss = compiled(*state, x, y)
  first_loss = float(loss)

  def run(n: int):
    nonlocal state
    for _ in range(n):
      *state, _ = compiled(*state, x, y)
    jax.block_until_ready(state)

  mine, *others = time_batches([run, *beside], protocol)
  return {
    "network": net.name,
    "group": net.group,
    "batch_size": batch,
    "image_size": net.image_size,
    "compute_dtype": compute_dtype,
    "compile_seconds": compile_s,
    "first_loss": first_loss,
    **speeds("", batch, mine),
    "beside_seconds": others,
  }


def run(
  networks: Sequence[Network],
  *,
  batch_sizes: Sequence[int],
  protocol,
  torch: torch_timing.Options | None = None,
  compute_dtype: str = "float32",
  progress: Callable[[str], None] = log,
  on_row: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
  """A row per trainable network (`trainable`) and batch size, in `compute_dtype`: rmjax's
  step and, with `torch` options, its twin's (AMP for bfloat16), timed in turn with it
  (`torch_train_imgs_per_sec`, `torch_ratio` = rmjax / PyTorch, `torch_first_loss`,
  `first_loss_diff`); None in those without a twin. `on_row(rows so far)` after each row."""
  nets = trainable(networks)
  rows, total, start = [], len(nets) * len(batch_sizes), time.perf_counter()
  for batch in batch_sizes:
    for net in nets:
      twin = None
      if torch is not None and torch_twins.supports(net.model):
        twin = torch_timing.training(
          net,
          np.asarray(images(batch, net.image_size)),
          labels(batch, num_classes(net)),
          learning_rate=LEARNING_RATE,
          momentum=MOMENTUM,
          weight_decay=WEIGHT_DECAY,
          options=torch,
          compute_dtype=compute_dtype,
        )
      row = measure(net, batch, protocol, [twin[0]] if twin else [], compute_dtype)
      torch_seconds = row.pop("beside_seconds")
      row.update({f"torch_train_{k}": None for k in SPEED_KEYS})
      row.update(torch_ratio=None, torch_first_loss=None, first_loss_diff=None)
      line = f"{row['imgs_per_sec']:.1f} imgs/s"
      if twin:
        row.update(speeds("torch_train_", batch, torch_seconds[0]))
        row["torch_ratio"] = row["imgs_per_sec"] / row["torch_train_imgs_per_sec"]
        row["torch_first_loss"] = twin[1]
        row["first_loss_diff"] = abs(row["first_loss"] - twin[1])
        line += (
          f", PyTorch {row['torch_train_imgs_per_sec']:.1f} imgs/s "
          f"(rmjax / PyTorch {row['torch_ratio']:.2f}), first losses "
          f"{row['first_loss']:.4f} / {twin[1]:.4f}"
        )
      rows.append(row)
      on_row(rows)
      progress(
        f"[train {len(rows)}/{total} {time.perf_counter() - start:.0f}s] {net.name}, batch "
        f"{batch}: compiled in {row['compile_seconds']:.1f}s, {line}"
      )
  return rows
