"""Train a model: `python train.py --config configs/demo.py`.

Resumes automatically from the latest checkpoint in --workdir. Override any config value on the
command line, e.g. `--config.num_epochs=3 --config.batch_size=64`. For several hosts, run the
same command on each with --distributed (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID): each process then reads its own slice of every batch.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rmjax import cli, compare, data, evaluation, train
from rmjax.mesh import Mesh

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file (configs/*.py); override values as --config.key=value.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Directory for checkpoints, TensorBoard events, config.json and "
  "metrics.json. Default: workdirs/<config file name>.",
)
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "Call jax.distributed.initialize() before touching devices: 'on' always, 'off' never, "
  "'auto' when JAX_COORDINATOR_ADDRESS is set or --coordinator_address is given.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0, for --distributed."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_bool(
  "config_help", False, "List every config key with its default and its comment, then exit."
)


def maybe_initialize_distributed() -> None:
  wanted = _DISTRIBUTED.value == "on" or (
    _DISTRIBUTED.value == "auto"
    and (_COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"))
  )
  if wanted:
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
    logging.info("process %d of %d", jax.process_index(), jax.process_count())


flags.mark_flags_as_required(["config"])


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/demo.py")
  workdir = _WORKDIR.value or cli.default_workdir(flags.FLAGS["config"].config_filename)
  cli.quiet_libraries()
  maybe_initialize_distributed()
  try:
    result = train.train_and_evaluate(config, workdir)
  except (ValueError, data.DatasetNotFoundError, train.TrainingDivergedError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(f"interrupted; checkpoint saved in {workdir}. Run the same command to resume.")
  logging.info("final metrics: %s", result.metrics)
  if config.compare_plain and config.init_from:
    # A fine-tuned plain network has no residual connections left to remove.
    logging.info("compare_plain skipped: the model (config.init_from) is already plain")
  elif config.compare_plain:
    report(config, result)


def report(config, result) -> None:
  """Converts the trained model and prints original vs plain side by side."""
  info = data.dataset_info(config.dataset, config.data_dir)
  make_batches = evaluation.eval_batches_for(config, info)
  mesh = Mesh.create()

  state = result.state
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  rows = compare.compare_with_plain(result.model, variables, make_batches, mesh)
  if jax.process_index() == 0:
    print(
      f"\n{config.model} on {config.dataset} test split ({info.num_test} images), "
      f"{jax.devices()[0].device_kind}:\n"
    )
    print(compare.format_table(rows))


def main() -> None:
  """The `rmjax-train` console script and `python train.py`."""
  cli.run(_main, __doc__, config=True)
