"""`train_and_evaluate`: the one training loop, as named steps.

prepare (config checked, dataset found, model, mesh, optimiser — before anything compiles) ->
initial state (resumed from the workdir's latest checkpoint, or `init_from` / given variables,
or a fresh init) -> the loop (a jitted step per global batch; progress, checkpoints, evals) ->
metrics.json. Data order and augmentation are pure functions of the seed and the step, so a
resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from rmjax import checkpoint, data, summary, transforms
from rmjax.evaluation import eval_apply_fn, eval_batches_for, evaluate
from rmjax.mesh import Mesh, replicated
from rmjax.run import create_model
from rmjax.train import init_from as init_from_lib
from rmjax.train.checks import check_config
from rmjax.train.optim import create_optimizer, learning_rate_schedule
from rmjax.train.state import TrainState, check_finite, init_state, train_step


@dataclasses.dataclass(frozen=True)
class TrainResult:
  model: Any
  state: TrainState
  metrics: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run is made of, all derived from its config before anything compiles."""

  config: ml_collections.ConfigDict
  info: data.DatasetInfo
  input_shape: tuple[int, int, int]
  model: Any
  mesh: Mesh
  steps_per_epoch: int
  total_steps: int
  schedule: Any
  tx: Any

  @property
  def local_batch(self) -> int:
    """This process's share of every global batch."""
    return self.config.batch_size // jax.process_count()


def steps_in_epoch(config, info: data.DatasetInfo) -> int:
  return max(info.num_train // config.batch_size, 1)


def num_steps(config, info: data.DatasetInfo | None = None) -> int:
  """How many steps `config` trains: `num_train_steps` if > 0, else `num_epochs` epochs."""
  if config.num_train_steps and config.num_train_steps > 0:
    return int(config.num_train_steps)
  info = info or data.dataset_info(config.dataset, config.data_dir)
  return int(config.num_epochs * steps_in_epoch(config, info))


def prepare(config, devices=None, init_variables=None) -> Setup:
  """Checks `config` and builds everything the run needs; a bad value, a missing dataset or a
  PLAIN that does not fit fails here in seconds, not after a compile."""
  mesh = Mesh.create(devices)
  check_config(config, devices=mesh.mesh.size, processes=jax.process_count())
  info = data.dataset_info(config.dataset, config.data_dir)
  data.prepare(config.dataset, config.data_dir)
  image_size = config.image_size or info.image_size
  input_shape = (image_size, image_size, info.channels)
  if config.init_from and init_variables is not None:
    raise ValueError("give config.init_from or init_variables, not both")
  if config.init_from:
    init_from_lib.check_init_from(config, input_shape, info.num_classes)
  model = create_model(config, info.num_classes)
  if init_variables is not None:
    try:
      transforms.check_variables(model, init_variables)
    except ValueError as e:
      raise ValueError(f"init_variables do not fit {config.model}: {e}") from None
  per_epoch, total = steps_in_epoch(config, info), num_steps(config, info)
  schedule = learning_rate_schedule(config, per_epoch, total)
  tx = create_optimizer(config, schedule)
  return Setup(config, info, input_shape, model, mesh, per_epoch, total, schedule, tx)


def initial_state(setup: Setup, mngr, last_saved: int | None, init_variables=None) -> TrainState:
  """The workdir's latest checkpoint if it has one, else step 0 from `config.init_from`, from
  `init_variables`, or from a fresh init — replicated over the mesh."""
  config, mesh = setup.config, setup.mesh
  init = jax.jit(
    functools.partial(init_state, setup.model, setup.tx, input_shape=setup.input_shape),
    out_shardings=mesh.replicated,
  )
  rng = jax.random.key(config.seed)
  if last_saved is not None:
    # Shapes only: the checkpoint replaces every value, so nothing is initialised (compiling
    # `model.init` can take longer than the restore).
    shapes = jax.eval_shape(init, rng)
    abstract = checkpoint.abstract_like(shapes, jax.tree.map(lambda _: mesh.replicated, shapes))
    state = checkpoint.restore(mngr, abstract, last_saved)
    logging.info("resumed from %s at step %d", mngr.directory, last_saved)
    return state
  if config.init_from:
    plain_vars = init_from_lib.plain_variables(config, setup.model, mesh, setup.local_batch)
    return init(rng, variables=plain_vars)
  if init_variables is not None:
    return init(rng, variables=replicated(init_variables, mesh))
  return init(rng)


def write_config(config, workdir: str) -> None:
  """The run's config as `config.json`: convert.py and evaluate.py read the architecture from
  it. `init_from` is made absolute so that it names the same PLAIN from any directory."""
  os.makedirs(workdir, exist_ok=True)
  saved = config.copy_and_resolve_references()
  if config.init_from:
    saved.init_from = os.path.abspath(config.init_from)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(saved.to_json_best_effort(indent=2))


def compiled_step(setup: Setup):
  """`train_step` jitted over the mesh, the state donated."""
  return jax.jit(
    functools.partial(
      train_step,
      model=setup.model,
      tx=setup.tx,
      schedule=setup.schedule,
      num_classes=setup.info.num_classes,
      label_smoothing=setup.config.label_smoothing,
    ),
    in_shardings=(setup.mesh.replicated, setup.mesh.batch),
    out_shardings=(setup.mesh.replicated, setup.mesh.replicated),
    donate_argnums=0,
  )


def training_batches(setup: Setup, start_step: int):
  """This process's share of each global training batch from `start_step` on."""
  config = setup.config
  return data.train_batches(
    config.dataset,
    batch_size=setup.local_batch,
    seed=config.seed,
    start_step=start_step,
    image_size=setup.input_shape[0],
    data_dir=config.data_dir,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    augment=config.augment,
  )


def evaluator(setup: Setup):
  """`run_eval(state) -> metrics` on the config's test split."""
  make_batches = eval_batches_for(setup.config, setup.info)
  apply_fn = eval_apply_fn(setup.model)
  total = -(-setup.info.num_test // setup.config.batch_size)

  def run_eval(state) -> dict[str, float]:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return evaluate(apply_fn, variables, make_batches(), setup.mesh, total)

  return run_eval


def log_eval(what: str, metrics: dict[str, float]) -> None:
  logging.info(
    "eval %s: top-1 %.4f, top-5 %.4f, loss %.4f",
    what,
    metrics["top1"],
    metrics["top5"],
    metrics["loss"],
  )


@dataclasses.dataclass
class Loop:
  """The loop's moving parts: what it runs, where it writes, when it logs, saves, evaluates."""

  setup: Setup
  mngr: Any
  step_fn: Any
  run_eval: Any
  writer: summary.MetricWriter
  progress: summary.Progress
  last_saved: int | None
  # The latest (state, step, metrics): what Ctrl-C saves.
  current: tuple[Any, int, Any] | None = None

  def save(self, step: int, state) -> None:
    checkpoint.save(self.mngr, step, state, force=True)
    self.last_saved = step

  def fetch(self, step: int, metrics) -> None:
    """Brings a step's metrics to the host, stops on a non-finite loss, and counts them."""
    done = jax.device_get(metrics)
    check_finite(step, done, self.last_saved)
    self.progress.add(done)

  def run(self, state, step: int, batches) -> tuple[TrainState, int, dict[str, float]]:
    """Trains from `step` to the last step: `(state, step, last eval metrics)`."""
    config, total = self.setup.config, self.setup.total_steps
    eval_every = max(int(config.eval_every_epochs * self.setup.steps_per_epoch), 1)
    eval_metrics: dict[str, float] = {}
    pending = None  # the previous step's metrics, fetched one step late to keep the device busy
    self.current = (state, step, None)
    while step < total:
      state, metrics = self.step_fn(state, self.setup.mesh.global_batch(next(batches)))
      step += 1
      self.current = (state, step, metrics)
      if pending is not None:
        self.fetch(*pending)
      pending = (step, metrics)
      at_checkpoint = step % config.checkpoint_every_steps == 0 or step == total
      if step % config.log_every_steps == 0 or at_checkpoint or step % eval_every == 0:
        self.fetch(step, metrics)
        pending = None
        if step % config.log_every_steps == 0 or step == total:
          means = self.progress.report(step)
          self.writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
      if at_checkpoint:
        self.save(step, state)
      if step % eval_every == 0 or step == total:
        eval_metrics = self.run_eval(state)
        self.writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        log_eval(f"at step {step} (epoch {step / self.setup.steps_per_epoch:.1f})", eval_metrics)
    return state, step, eval_metrics

  def interrupted(self, state, step: int, metrics) -> None:
    """Ctrl-C: saves the current step (if its loss is finite and it is not saved yet)."""
    finite = metrics is not None and bool(np.isfinite(jax.device_get(metrics["loss"])))
    if self.last_saved != step and finite:
      self.save(step, state)
    self.mngr.wait_until_finished()
    logging.warning("interrupted at step %d; checkpoint saved, run again to resume", step)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, devices=None, init_variables=None
) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns a TrainResult.

  `config` is a full config (`configs/default.py` and what a config file changes). With
  `config.init_from` (a PLAIN directory) the model is that plain network, fine-tuned (Appendix
  A.2): a fresh run starts from its variables, with the reserved channels' BN statistics
  re-estimated on `config.init_bn_batches` training batches, and evaluates it once before the
  first step (`init_eval_*` in the metrics). `init_variables` (`{"params", "batch_stats"}` of
  the config's model, e.g. a ResNet slimmed by `transforms.prune_resnet`) start a fresh run the
  same way. A resumed run starts from the workdir's checkpoint and ignores both.

  Raises:
    ValueError: unknown model/dataset, a bad config value, or an `init_from` that is missing,
      damaged or does not fit the dataset (the message says which).
    TrainingDivergedError: the loss became NaN/inf (the message names the step).
    KeyboardInterrupt: after saving a checkpoint of the current step.
  """
  setup = prepare(config, devices, init_variables)
  mngr = checkpoint.manager(workdir, max_to_keep=config.keep_checkpoints)
  last_saved = mngr.latest_step()
  if last_saved is not None:
    init_from_lib.check_resume_source(config, workdir)
  state = initial_state(setup, mngr, last_saved, init_variables)
  start_step = int(state.step)
  fine_tune_start = last_saved is None and (bool(config.init_from) or init_variables is not None)
  first = jax.process_index() == 0
  writer = summary.MetricWriter(workdir, enabled=first)
  if first:
    write_config(config, workdir)
  loop = Loop(
    setup,
    mngr,
    compiled_step(setup),
    evaluator(setup),
    writer,
    summary.Progress(setup.total_steps, start_step, config.batch_size),
    last_saved,
  )
  initial_eval: dict[str, float] = {}
  if fine_tune_start:
    # The converted network's accuracy, which fine-tuning starts from (the pre-trained
    # model's, as RM is exact): step 0 of the eval curves.
    initial_eval = loop.run_eval(state)
    writer.write_scalars(0, {f"eval/{k}": v for k, v in initial_eval.items()})
    log_eval(f"before fine-tuning {config.init_from or 'the given variables'}", initial_eval)
  logging.info(
    "training %s on %s: %d steps (%d per epoch), global batch %d on %d devices, %d processes",
    f"PlainNet of {config.init_from}" if config.init_from else config.model,
    config.dataset,
    setup.total_steps,
    setup.steps_per_epoch,
    config.batch_size,
    setup.mesh.mesh.size,
    jax.process_count(),
  )
  start_time = time.perf_counter()
  try:
    state, step, eval_metrics = loop.run(state, start_step, training_batches(setup, start_step))
  except KeyboardInterrupt:
    loop.interrupted(*loop.current)
    raise
  finally:
    mngr.wait_until_finished()
  if not eval_metrics:  # resumed at the last step: nothing trained, still report the model
    eval_metrics = loop.run_eval(state)
  results = {
    "step": step,
    "epochs": step / setup.steps_per_epoch,
    "train_seconds_this_run": time.perf_counter() - start_time,
    **{f"eval_{k}": v for k, v in eval_metrics.items()},
    **{f"init_eval_{k}": v for k, v in initial_eval.items()},
  }
  writer.write_json("metrics.json", results)
  writer.close()
  return TrainResult(model=setup.model, state=state, metrics=results)
