"""The PyTorch column of `bench.py`: each network's twin (`bench.torch_twins`), run as rmjax is.

Here are the twins' batches as `run(n)` functions; `rmjax.bench.measure.time_batches` times them by
the same protocol as rmjax's (warm-up batches, then repeats x timed batches, imgs/s the median
over the repeats), taking turns with rmjax repeat by repeat, on the same input batch (NHWC ->
NCHW) and variables, with `torch.set_num_threads(n)`, n the CPUs this process may run on — as
XLA:CPU uses. Inference: the twin in eval mode under `torch.inference_mode()`. A training step:
`model.train()`, cross-entropy on the same labels, `torch.optim.SGD` with momentum and weight
decay, `zero_grad` / `backward` / `step` — what `rmjax.bench.training` times in rmjax. torch runs
synchronously on CPU: a batch has finished when its call returns.

torch is imported only when a function here needs it (`pip install 'rmjax[interop]'`).

  >>> meta = configure()                          # {"torch_version": ..., "torch_threads": 2}
  >>> run, logits = inference(network, x)         # run(n): n batches
"""

from __future__ import annotations

import os

import numpy as np

from rmjax.bench import torch_twins


def available() -> bool:
  """Whether torch can be imported (imports it)."""
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def cpu_count() -> int:
  """The CPUs this process may run on (XLA:CPU sizes its thread pool by them)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def configure(threads: int | None = None) -> dict:
  """Sets torch's intra-op threads (default `cpu_count()`); returns its version and threads."""
  import torch

  torch.set_num_threads(threads or cpu_count())
  return {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def _prepare(net, x: np.ndarray, channels_last: bool):
  """The twin of `net` and `x` as its input, in torch's channels-last memory format if asked
  (NCHW shapes either way; oneDNN's convolutions run NHWC in memory)."""
  import torch

  module = torch_twins.twin(net)
  inputs = torch_twins.to_nchw(x, next(module.parameters()).dtype)
  if channels_last:
    module = module.to(memory_format=torch.channels_last)
    inputs = inputs.contiguous(memory_format=torch.channels_last)
  return module, inputs


def inference(net, x: np.ndarray, *, channels_last: bool = False):
  """`(run, logits)`: `run(n)` runs the twin of `net` on the NHWC batch `x` n times in eval
  mode under `torch.inference_mode()`; `logits` are its output (float32 NumPy)."""
  import torch

  module, inputs = _prepare(net, x, channels_last)
  with torch.inference_mode():
    logits = module(inputs).float().numpy()

  def run(n: int):
    with torch.inference_mode():
      for _ in range(n):
        module(inputs)

  return run, logits


def training(
  net,
  x: np.ndarray,
  labels: np.ndarray,
  *,
  learning_rate: float,
  momentum: float,
  weight_decay: float,
  channels_last: bool = False,
):
  """`(run, first_loss)`: `run(n)` takes n SGD steps of the twin of `net` (training mode) on
  `(x, labels)`; `first_loss` is the loss of the first step, taken here before any other."""
  import torch
  import torch.nn.functional as F

  module, inputs = _prepare(net, x, channels_last)
  module.train()
  optimizer = torch.optim.SGD(
    module.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
  )
  targets = torch.from_numpy(np.asarray(labels, np.int64))

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(module(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss

  first_loss = float(step().detach())

  def run(n: int):
    for _ in range(n):
      step()

  return run, first_loss
