"""The PyTorch column of `bench.py`: each network's twin (`bench.torch_twins`), run as rmjax is.

Here are the twins' batches as `run(n)` functions; `rmjax.bench.measure.time_batches` times them by
the same protocol as rmjax's (warm-up batches, then repeats x timed batches, imgs/s the median
over the repeats), taking turns with rmjax repeat by repeat, on the same input batch (NHWC ->
NCHW) and variables, on the device jax runs on (`device`): on the CPU with
`torch.set_num_threads(n)`, n the CPUs this process may run on — as XLA:CPU uses; on a GPU
with CUDA, channels-last memory format and `torch.backends.cudnn.benchmark` (cuDNN picks each
conv's fastest algorithm, as XLA's autotuner does), and float32 convolutions in TF32, both
frameworks' default. `run(n)` returns when its n batches are done: on CUDA, where torch
launches asynchronously, it ends with `torch.cuda.synchronize()` (jax's runs block likewise).

Inference: the twin in eval mode under `torch.inference_mode()`, or `torch.compile`d
(`Options.compile`; the first call compiles, under a time limit). A training step:
`model.train()`, cross-entropy on the same labels, `torch.optim.SGD` with momentum and weight
decay, `zero_grad` / `backward` / `step` — what `rmjax.bench.training` times in rmjax; with
`compute_dtype="bfloat16"`, forward and loss under `torch.autocast` (AMP: float32 weights).

torch is imported only when a function here needs it (`pip install 'rmjax[interop]'`).

  >>> options = Options(device=device("gpu"), channels_last=True)
  >>> meta = configure(options)                   # {"torch_version": ..., "torch_threads": 2}
  >>> run, logits = inference(network, x, options)  # run(n): n batches
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time

import numpy as np

from rmjax.bench import torch_twins


@dataclasses.dataclass(frozen=True)
class Options:
  """How the twins run: `device` ("cpu" or "cuda"), channels-last memory format, and which
  networks (by name; "all") also run `torch.compile`d, with `compile_mode` and
  `compile_backend`; a compilation (the first call) is abandoned after `compile_timeout` s."""

  device: str = "cpu"
  channels_last: bool = False
  compile: tuple[str, ...] = ()
  compile_mode: str = "default"
  compile_backend: str = "inductor"
  compile_timeout: float = 300.0

  def compiles(self, name: str) -> bool:
    return "all" in self.compile or name in self.compile


class CompileTimeout(BaseException):
  """`torch.compile`'s first call ran past `Options.compile_timeout`. A BaseException, so that
  no `except Exception` inside torch turns it into a silent fallback to eager execution."""


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


def device(platform: str) -> str:
  """The torch device beside jax's `platform`: "cuda" for "gpu", "cpu" for "cpu". Raises
  ValueError where torch cannot run there (a CPU-only torch beside a GPU; another platform)."""
  if platform == "cpu":
    return "cpu"
  if platform == "gpu":
    import torch

    if torch.cuda.is_available():
      return "cuda"
    raise ValueError(
      f"jax runs on a GPU, but PyTorch {torch.__version__} has no CUDA: its twins would run "
      "on the CPU, no peer. Install a CUDA build of torch, or pass --notorch"
    )
  raise ValueError(f"no PyTorch twins on jax's platform {platform!r}: pass --notorch")


def configure(options: Options, threads: int | None = None) -> dict:
  """Sets torch's intra-op threads (default `cpu_count()`) and, on CUDA, cuDNN's autotuning;
  returns what the report's header states: version, threads, device, precision settings."""
  import torch

  torch.set_num_threads(threads or cpu_count())
  meta = {
    "torch_version": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "torch_device": options.device,
    "torch_channels_last": options.channels_last,
  }
  if options.device == "cuda":
    torch.backends.cudnn.benchmark = True
    meta.update(
      torch_device_name=torch.cuda.get_device_name(),
      torch_cudnn_benchmark=True,
      torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
      torch_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
    )
  if options.compile:
    meta.update(
      torch_compile=list(options.compile),
      torch_compile_mode=options.compile_mode,
      torch_compile_backend=options.compile_backend,
      torch_compile_timeout=options.compile_timeout,
    )
  return meta


def synchronize(device_name: str) -> None:
  """Waits for the work torch queued on `device_name` (CUDA launches asynchronously)."""
  if device_name == "cuda":
    import torch

    torch.cuda.synchronize()


def _prepare(net, x: np.ndarray, options: Options):
  """The twin of `net` and `x` as its input, on the device, in torch's channels-last memory
  format if asked (NCHW shapes either way; oneDNN and cuDNN run NHWC in memory)."""
  import torch

  module = torch_twins.twin(net).to(options.device)
  inputs = torch_twins.to_nchw(x, next(module.parameters()).dtype).to(options.device)
  if options.channels_last:
    module = module.to(memory_format=torch.channels_last)
    inputs = inputs.contiguous(memory_format=torch.channels_last)
  return module, inputs


def _batches(forward, inputs, device_name: str):
  """`run(n)`: n calls of `forward(inputs)` under `torch.inference_mode()`, then waited for."""
  import torch

  def run(n: int):
    with torch.inference_mode():
      for _ in range(n):
        forward(inputs)
    synchronize(device_name)

  return run


def _logits(forward, inputs) -> np.ndarray:
  import torch

  with torch.inference_mode():
    return forward(inputs).float().cpu().numpy()


def inference(net, x: np.ndarray, options: Options = Options()):
  """`(run, logits)`: `run(n)` runs the twin of `net` on the NHWC batch `x` n times in eval
  mode under `torch.inference_mode()`; `logits` are its output (float32 NumPy)."""
  module, inputs = _prepare(net, x, options)
  return _batches(module, inputs, options.device), _logits(module, inputs)


@contextlib.contextmanager
def _time_limit(seconds: float):
  """Raises CompileTimeout in this (the main) thread after `seconds` (SIGALRM), and again
  every half second until it leaves the block: a signal handler's exception raised inside a
  finalizer or callback is printed and dropped ("Exception ignored in ..."; seen with
  inductor), and compiling would go on."""

  def expire(signum, frame):
    raise CompileTimeout(f"torch.compile took more than {seconds:g} s")

  previous = signal.signal(signal.SIGALRM, expire)
  signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def compiled_inference(net, x: np.ndarray, options: Options):
  """`(run, logits, compile_seconds)` of the twin of `net` under `torch.compile` (eval mode,
  `options.compile_mode` and `compile_backend`, static shapes): `compile_seconds` is its first
  call, which compiles. Raises CompileTimeout after `options.compile_timeout` s (and resets
  torch's compilation caches)."""
  import torch

  module, inputs = _prepare(net, x, options)
  # A mode is the inductor backend's; other backends (e.g. "eager", dynamo alone) take none.
  mode = options.compile_mode if options.compile_backend == "inductor" else None
  forward = torch.compile(module, mode=mode, backend=options.compile_backend, dynamic=False)
  start = time.perf_counter()
  try:
    with _time_limit(options.compile_timeout):
      logits = _logits(forward, inputs)
  except CompileTimeout:
    torch._dynamo.reset()
    raise
  seconds = time.perf_counter() - start
  return _batches(forward, inputs, options.device), logits, seconds


def training(
  net,
  x: np.ndarray,
  labels: np.ndarray,
  *,
  learning_rate: float,
  momentum: float,
  weight_decay: float,
  options: Options = Options(),
  compute_dtype: str = "float32",
):
  """`(run, first_loss)`: `run(n)` takes n SGD steps of the twin of `net` (training mode) on
  `(x, labels)`; `first_loss` is the loss of the first step, taken here before any other. With
  `compute_dtype="bfloat16"`, the forward pass and the loss run under `torch.autocast` (AMP:
  float32 weights and optimizer, bfloat16 convolutions; no loss scaling, as bfloat16 has
  float32's range)."""
  import torch
  import torch.nn.functional as F

  module, inputs = _prepare(net, x, options)
  module.train()
  optimizer = torch.optim.SGD(
    module.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
  )
  targets = torch.from_numpy(np.asarray(labels, np.int64)).to(options.device)
  autocast = (
    torch.autocast(options.device, dtype=torch.bfloat16)
    if compute_dtype == "bfloat16"
    else contextlib.nullcontext()
  )

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = F.cross_entropy(module(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss

  first_loss = float(step().detach())

  def run(n: int):
    for _ in range(n):
      step()
    synchronize(options.device)

  return run, first_loss
