"""The training loop: one `jax.jit` step over a device mesh (data parallel), orbax checkpoints.

State is replicated (`P()`), batches are sharded over the mesh's `data` axis (`P('data')`).
Under jit, BatchNorm statistics over a sharded batch are computed over the global batch, so
1 device and N devices train the same model from the same global batches. The same code runs on
one CPU, fake CPU devices, a GPU, or several hosts (after `jax.distributed.initialize()`):
every process feeds its own slice of each global batch.

  >>> from rmjax import train
  >>> result = train.train_and_evaluate(config, workdir="/tmp/run")
  >>> result.metrics["eval_top1"]

- `loop`: `train_and_evaluate` and its steps (prepare, initial state, the loop).
- `state`: the training state and one SGD step; `optim`: optimiser and schedules.
- `checks`: the config values a run accepts; `init_from`: fine-tuning a PLAIN (Appendix A.2).
"""

from rmjax.train.checks import check_config
from rmjax.train.loop import TrainResult, num_steps, train_and_evaluate
from rmjax.train.optim import create_optimizer
from rmjax.train.state import TrainingDivergedError, TrainState

__all__ = [
  "TrainResult",
  "TrainState",
  "TrainingDivergedError",
  "check_config",
  "create_optimizer",
  "num_steps",
  "train_and_evaluate",
]
