"""The training loop: one `jax.jit` step over a device mesh (data parallel), orbax checkpoints.

State is replicated (`P()`), batches are sharded over the mesh's `data` axis (`P('data')`).
Under jit, BatchNorm statistics over a sharded batch are computed over the global batch, so
1 device and N devices train the same model from the same global batches. The same code runs on
one CPU, fake CPU devices, a GPU, or several hosts (after `jax.distributed.initialize()`):
every process feeds its own slice of each global batch.

  >>> from rmjax import train
  >>> result = train.train_and_evaluate(config, workdir="/tmp/run")
  >>> result.metrics["eval_top1"]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rmjax import checkpoint, data, finetune, models, plain_io, summary, transforms
from rmjax.models.plain import BatchNorm, Conv, PlainNet


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw key data (uint32): orbax stores it as a plain array


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """The config's model; `config.model_kwargs` are passed on (e.g. `stem`).

  With `config.init_from` (a PLAIN directory), the `PlainNet` of its plain.json instead:
  `config.model` and `config.model_kwargs` are then ignored.
  """
  if config.get("init_from"):
    return plain_architecture(config.init_from)[0]
  kwargs = dict(config.get("model_kwargs", {}) or {})
  # A config read back from JSON has (nested) lists; architectures are hashable (static under
  # jit), so every list becomes a tuple.
  kwargs = {k: _tuples(v) for k, v in kwargs.items()}
  return models.create(config.model, num_classes=num_classes, **kwargs)


def _tuples(value):
  if isinstance(value, list | tuple):
    return tuple(_tuples(v) for v in value)
  return value


def plain_architecture(path: str) -> tuple[PlainNet, tuple[int, ...]]:
  """The `PlainNet` and input shape that a PLAIN directory's plain.json records (no weights read),
  without its convs' record of Dirac structure: training fills those zeros in, so evaluating
  (or converting) a checkpoint of the run must not skip them (`PlainNet`'s `structured=None`).

  Raises:
    PlainFormatError (a ValueError): `path` is missing or not a PLAIN directory.
  """
  try:
    arch = plain_io.read_arch(path)
    layers = plain_io.layers_from_json(arch["layers"])
  except plain_io.PlainFormatError as e:
    raise plain_io.PlainFormatError(f"config.init_from: {e}") from None
  plain = PlainNet(tuple(x.unstructured() if isinstance(x, Conv) else x for x in layers))
  return plain, tuple(arch["input_shape"])


def check_init_from(config, input_shape: tuple[int, ...], num_classes: int) -> None:
  """Raises ValueError where `config.init_from` cannot be fine-tuned on the config's dataset."""
  plain, plain_shape = plain_architecture(config.init_from)
  if plain_shape != tuple(input_shape):
    raise ValueError(
      f"config.init_from: {config.init_from} takes inputs of shape {plain_shape}, but "
      f"{config.dataset} images are {tuple(input_shape)}: fine-tune it on data of its own shape"
    )
  x = jax.ShapeDtypeStruct((1, *plain_shape), jnp.float32)
  logits = jax.eval_shape(plain.init_with_output, jax.random.key(0), x)[0]
  if logits.shape[-1] != num_classes:
    raise ValueError(
      f"config.init_from: {config.init_from} has {logits.shape[-1]} outputs, but "
      f"{config.dataset} has {num_classes} classes"
    )


def _check_resume_source(config, workdir: str) -> None:
  """Resuming restores into the model this run builds: refuse a workdir whose checkpoints were
  written by a run with another `init_from` (a different model) with a one-line error."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      previous = json.load(f).get("init_from") or ""
  except (OSError, ValueError):
    return
  now = config.get("init_from") or ""

  def norm(path):
    return os.path.abspath(path) if path else ""

  if norm(previous) != norm(now):
    raise ValueError(
      f"{workdir} holds checkpoints of a run with config.init_from={previous!r}, not "
      f"{now!r}: resume with the same init_from, or use a new --workdir"
    )


def learning_rate_schedule(config, steps_per_epoch: int, total_steps: int):
  """`step`: lr x `lr_decay_factor` every `lr_decay_epochs` (the paper's CIFAR recipe, Sec. 3);
  `cosine`: linear warm-up then cosine decay (the usual ImageNet recipe)."""
  lr = config.learning_rate
  warmup = int(config.get("warmup_epochs", 0) * steps_per_epoch)
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
  sparsity = config.get("sparsity", 0.0)
  if sparsity < 0:
    raise ValueError(f"config.sparsity must be >= 0, got {sparsity}")
  return optax.chain(
    *([batchnorm_l1(sparsity)] if sparsity else []),
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(schedule, momentum=config.momentum, nesterov=config.get("nesterov", False)),
  )


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


def eval_sums(logits, batch):
  """Sums over the real (mask == 1) examples: loss, top-1 and top-5 correct, count."""
  mask = batch["mask"]
  label = batch["label"]
  k = min(5, logits.shape[-1])
  top_k = jax.lax.top_k(logits, k)[1]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, label)
  return {
    "loss": jnp.sum(loss * mask),
    "top1": jnp.sum((top_k[:, 0] == label) * mask),
    "top5": jnp.sum(jnp.any(top_k == label[:, None], axis=-1) * mask),
    "count": jnp.sum(mask),
  }


def eval_step(variables, batch, *, apply_fn):
  return eval_sums(apply_fn(variables, batch["image"]), batch)


def accumulate(totals, sums):
  """Adds a batch's `sums` to running `totals` (None at the start)."""
  return sums if totals is None else jax.tree.map(jnp.add, totals, sums)


def eval_metrics_from(totals) -> dict[str, float]:
  """Top-1/top-5 accuracy, mean loss and example count from summed `eval_sums`."""
  if totals is None:
    raise ValueError("the evaluation split yielded no batches")
  count = float(totals["count"])
  return {
    "top1": float(totals["top1"]) / count,
    "top5": float(totals["top5"]) / count,
    "loss": float(totals["loss"]) / count,
    "examples": int(count),
  }


@dataclasses.dataclass(frozen=True)
class Mesh:
  """The device mesh and the two shardings the loop uses."""

  mesh: jax.sharding.Mesh
  replicated: NamedSharding
  batch: NamedSharding

  @classmethod
  def create(cls, devices=None):
    devices = jax.devices() if devices is None else list(devices)
    mesh = jax.make_mesh(
      (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )
    return cls(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("data")))

  def global_batch(self, local_batch: dict[str, np.ndarray]):
    """This process's slice of a global batch -> global arrays sharded over `data`."""
    return {
      k: jax.make_array_from_process_local_data(self.batch, v) for k, v in local_batch.items()
    }


def evaluate(apply_fn, variables, batches, mesh: Mesh) -> dict[str, float]:
  """Top-1/top-5 accuracy and loss of `apply_fn(variables, images)` over `batches`."""
  step = jax.jit(functools.partial(eval_step, apply_fn=apply_fn), out_shardings=mesh.replicated)
  totals = None
  for local in batches:
    totals = accumulate(totals, step(variables, mesh.global_batch(local)))
  return eval_metrics_from(totals)


def eval_batches_for(config, info: data.DatasetInfo):
  """A function returning a fresh pass over this process's share of the config's test split."""
  return functools.partial(
    data.eval_batches,
    config.dataset,
    batch_size=config.batch_size // jax.process_count(),
    image_size=config.get("image_size") or info.image_size,
    data_dir=config.get("data_dir"),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def eval_apply_fn(model):
  return lambda variables, x: model.apply(variables, x, train=False)


def _check_finite(step: int, metrics: dict[str, float], last_saved: int | None) -> None:
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


def replicated(variables, mesh: Mesh):
  """The same arrays on every process -> global arrays replicated over `mesh`."""
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(mesh.replicated, np.asarray(x)), variables
  )


def plain_variables(config, plain: PlainNet, mesh: Mesh, local_batch: int):
  """The variables of `config.init_from`, replicated over `mesh`, with the reserved channels'
  BN statistics re-estimated on the first `config.init_bn_batches` training batches (A.2)."""
  try:
    _, variables = plain_io.load_plain(config.init_from)
  except plain_io.PlainFormatError as e:
    raise plain_io.PlainFormatError(f"config.init_from: {e}") from None
  # Every process loads the same file; as global replicated arrays they sit on the mesh that
  # the (sharded) batches of the re-estimation use.
  variables = replicated(variables, mesh)
  num_batches = config.get("init_bn_batches", 10)
  if not any(isinstance(layer, BatchNorm) for layer in plain.layers):
    logging.warning(
      "config.init_from: %s has no BatchNorm (deploy form), so no statistics to re-estimate; "
      "Appendix A.2 finds fine-tuning the BN form (convert with --keep_bn) works better",
      config.init_from,
    )
  elif not finetune.reserved_batchnorms(plain):
    logging.info(
      "config.init_from: %s has no reserved BN channels to re-estimate", config.init_from
    )
  elif num_batches > 0:
    batches = data.train_batches(
      config.dataset,
      batch_size=local_batch,
      seed=config.seed,
      image_size=config.get("image_size"),
      data_dir=config.get("data_dir"),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      augment=config.get("augment", True),
    )
    images = (mesh.global_batch({"image": b["image"]})["image"] for b in batches)
    start = time.perf_counter()
    variables = finetune.reestimate_reserved_batchnorm(
      plain, variables, images, num_batches=num_batches, out_shardings=mesh.replicated
    )
    logging.info(
      "re-estimated the reserved BN statistics of %s on %d batches (%.1f s)",
      config.init_from,
      num_batches,
      time.perf_counter() - start,
    )
  return variables


def steps_in_epoch(config, info: data.DatasetInfo) -> int:
  return max(info.num_train // config.batch_size, 1)


def num_steps(config, info: data.DatasetInfo | None = None) -> int:
  """How many steps `config` trains: `num_train_steps` if > 0, else `num_epochs` epochs."""
  steps = config.get("num_train_steps", -1)
  if steps is not None and steps > 0:
    return int(steps)
  info = info or data.dataset_info(config.dataset, config.get("data_dir"))
  return int(config.num_epochs * steps_in_epoch(config, info))


@dataclasses.dataclass(frozen=True)
class TrainResult:
  model: Any
  state: TrainState
  metrics: dict[str, float]


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, devices=None, init_variables=None
):
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns a TrainResult.

  `init_variables` (`{"params", "batch_stats"}` of the config's model, e.g. a ResNet slimmed by
  `transforms.prune_resnet`): a fresh run starts from them instead of a random init and, like
  `init_from`, is evaluated before the first step; a resumed run ignores them.

  With `config.init_from` (a PLAIN directory) the model is that plain network, fine-tuned
  (Appendix A.2): a fresh run starts from its variables, with the reserved channels' BN
  statistics re-estimated on `config.init_bn_batches` training batches, and evaluates it once
  before the first step (`init_eval_*` in the metrics); a resumed run starts from the workdir's
  checkpoint.

  Raises:
    ValueError: unknown model/dataset, a bad config value, or an `init_from` that is missing,
      damaged or does not fit the dataset (the message says which).
    TrainingDivergedError: the loss became NaN/inf (the message names the step).
    KeyboardInterrupt: after saving a checkpoint of the current step.
  """
  info = data.dataset_info(config.dataset, config.get("data_dir"))
  # Before compiling anything: a missing dataset should fail in seconds, not after the init.
  data.prepare(config.dataset, config.get("data_dir"))
  image_size = config.get("image_size") or info.image_size
  input_shape = (image_size, image_size, info.channels)
  init_from = config.get("init_from") or ""
  if init_from:
    check_init_from(config, input_shape, info.num_classes)
  model = create_model(config, info.num_classes)
  if init_variables is not None:
    try:
      transforms.check_variables(model, init_variables)
    except ValueError as e:
      raise ValueError(f"init_variables do not fit {config.model}: {e}") from None
  process_count, process_index = jax.process_count(), jax.process_index()
  if config.batch_size % process_count:
    raise ValueError(
      f"batch_size {config.batch_size} must be divisible by the {process_count} processes"
    )
  mesh = Mesh.create(devices)
  if config.batch_size % mesh.mesh.size:
    raise ValueError(
      f"batch_size {config.batch_size} must be divisible by the {mesh.mesh.size} devices"
    )
  steps_per_epoch = steps_in_epoch(config, info)
  total_steps = num_steps(config, info)
  schedule = learning_rate_schedule(config, steps_per_epoch, total_steps)
  tx = create_optimizer(config, schedule)

  init = jax.jit(
    functools.partial(init_state, model, tx, input_shape=input_shape),
    out_shardings=mesh.replicated,
  )
  local_batch = config.batch_size // process_count
  mngr = checkpoint.manager(workdir, max_to_keep=config.get("keep_checkpoints", 3))
  last_saved = mngr.latest_step()
  if last_saved is not None:
    _check_resume_source(config, workdir)
  if init_from and init_variables is not None:
    raise ValueError("give config.init_from or init_variables, not both")
  fine_tune_start = (bool(init_from) or init_variables is not None) and last_saved is None
  rng = jax.random.key(config.seed)
  if last_saved is not None:
    # Shapes only: the checkpoint replaces every value, so nothing is initialised (compiling
    # `model.init` can take longer than the restore).
    shapes = jax.eval_shape(init, rng)
    abstract = checkpoint.abstract_like(shapes, jax.tree.map(lambda _: mesh.replicated, shapes))
    state = checkpoint.restore(mngr, abstract, last_saved)
    logging.info("resumed from %s at step %d", mngr.directory, last_saved)
  elif init_from:
    state = init(rng, variables=plain_variables(config, model, mesh, local_batch))
  elif init_variables is not None:
    state = init(rng, variables=replicated(init_variables, mesh))
  else:
    state = init(rng)
  start_step = int(state.step)

  writer = summary.MetricWriter(workdir, enabled=process_index == 0)
  if process_index == 0:
    os.makedirs(workdir, exist_ok=True)
    # convert.py reads the architecture from here; init_from is made absolute so that the
    # workdir's config names the same PLAIN from any directory.
    saved = config.copy_and_resolve_references()
    if init_from:
      saved.init_from = os.path.abspath(init_from)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(saved.to_json_best_effort(indent=2))

  step_fn = jax.jit(
    functools.partial(
      train_step,
      model=model,
      tx=tx,
      schedule=schedule,
      num_classes=info.num_classes,
      label_smoothing=config.get("label_smoothing", 0.0),
    ),
    in_shardings=(mesh.replicated, mesh.batch),
    out_shardings=(mesh.replicated, mesh.replicated),
    donate_argnums=0,
  )
  batches = data.train_batches(
    config.dataset,
    batch_size=local_batch,
    seed=config.seed,
    start_step=start_step,
    image_size=image_size,
    data_dir=config.get("data_dir"),
    process_index=process_index,
    process_count=process_count,
    augment=config.get("augment", True),
  )

  make_eval_batches = eval_batches_for(config, info)

  def run_eval(state) -> dict[str, float]:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return evaluate(eval_apply_fn(model), variables, make_eval_batches(), mesh)

  log_every = config.get("log_every_steps", 50)
  ckpt_every = config.get("checkpoint_every_steps", 1000)
  eval_every = max(int(config.get("eval_every_epochs", 1) * steps_per_epoch), 1)
  progress = summary.Progress(total_steps, start_step, config.batch_size)
  initial_eval: dict[str, float] = {}
  if fine_tune_start:
    # The converted network's accuracy, which fine-tuning starts from (the pre-trained
    # model's, as RM is exact): step 0 of the eval curves.
    initial_eval = run_eval(state)
    writer.write_scalars(0, {f"eval/{k}": v for k, v in initial_eval.items()})
    logging.info(
      "eval before fine-tuning %s: top-1 %.4f, top-5 %.4f, loss %.4f",
      init_from or "the given variables",
      initial_eval["top1"],
      initial_eval["top5"],
      initial_eval["loss"],
    )
  logging.info(
    "training %s on %s: %d steps (%d per epoch), global batch %d on %d devices, %d processes",
    f"PlainNet of {init_from}" if init_from else config.model,
    config.dataset,
    total_steps,
    steps_per_epoch,
    config.batch_size,
    mesh.mesh.size,
    process_count,
  )
  start_time = time.perf_counter()
  eval_metrics: dict[str, float] = {}
  pending = None  # the previous step's metrics, fetched one step late to keep the device busy
  step, metrics = start_step, None
  try:
    while step < total_steps:
      state, metrics = step_fn(state, mesh.global_batch(next(batches)))
      step += 1
      if pending is not None:
        done = jax.device_get(pending[1])
        _check_finite(pending[0], done, last_saved)
        progress.add(done)
      pending = (step, metrics)
      at_checkpoint = step % ckpt_every == 0 or step == total_steps
      if step % log_every == 0 or at_checkpoint or step % eval_every == 0:
        done = jax.device_get(metrics)
        _check_finite(step, done, last_saved)
        progress.add(done)
        pending = None
        if step % log_every == 0 or step == total_steps:
          writer.write_scalars(step, {f"train/{k}": v for k, v in progress.report(step).items()})
      if at_checkpoint:
        checkpoint.save(mngr, step, state, force=True)
        last_saved = step
      if step % eval_every == 0 or step == total_steps:
        eval_metrics = run_eval(state)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        logging.info(
          "eval at step %d (epoch %.1f): top-1 %.4f, top-5 %.4f, loss %.4f",
          step,
          step / steps_per_epoch,
          eval_metrics["top1"],
          eval_metrics["top5"],
          eval_metrics["loss"],
        )
  except KeyboardInterrupt:
    finite = metrics is not None and bool(np.isfinite(jax.device_get(metrics["loss"])))
    if last_saved != step and finite:
      checkpoint.save(mngr, step, state, force=True)
      last_saved = step
    mngr.wait_until_finished()
    logging.warning("interrupted at step %d; checkpoint saved, run again to resume", step)
    raise
  finally:
    mngr.wait_until_finished()
  if not eval_metrics:  # resumed at the last step: nothing trained, still report the model
    eval_metrics = run_eval(state)
  results = {
    "step": step,
    "epochs": step / steps_per_epoch,
    "train_seconds_this_run": time.perf_counter() - start_time,
    **{f"eval_{k}": v for k, v in eval_metrics.items()},
    **{f"init_eval_{k}": v for k, v in initial_eval.items()},
  }
  writer.write_json("metrics.json", results)
  writer.close()
  return TrainResult(model=model, state=state, metrics=results)


def load_config_json(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in its workdir."""
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))
