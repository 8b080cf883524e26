"""Measuring inference: speed by the paper's protocol, size, FLOPs, memory, compile time.

The paper's speed protocol (Sec. 5): batch 128, 50 batches to warm up, then 50 timed batches.
Here every network (`rmjax.bench.suites`) is jit-compiled once per batch size; the compiled
executable runs `warmup` batches, then `repeats` times `batches` timed batches, blocking on
the results (`block_until_ready`). Each row also has parameters, MACs (the "FLOPs" of papers
and of docs/*.md), XLA's FLOPs from the cost analysis of the lowered and compiled program and
the analytical count of the same (`cost.count_flops`; they must agree:
`FLOPS_TOLERANCE`), peak memory (XLA's memory analysis: arguments + outputs + temporaries),
compile time, the speed-up over its group's baseline and the max |logit difference| from the
network it was converted from, on the timed batch. With `torch=True`, each network with a
PyTorch twin (`rmjax.bench.torch_twins`) is also timed in PyTorch by the same protocol on the same
batch (`rmjax.bench.torch_timing`), the two taking turns repeat by repeat: its imgs/s, the ratio
rmjax / PyTorch, and the max |logit difference| between the two (the proof that they run the
same weights). Where `torch.Options.compile` names a network, its `torch.compile`d twin is
timed in the same turns (columns `torch_compiled_*`, and its compile time).

  >>> nets = suites.build(["tiny"])
  >>> rows = run(nets, batch_sizes=[8], protocol=Protocol(warmup=1, batches=2, repeats=1))
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rmjax import transforms
from rmjax.bench import onnx_timing, torch_timing, torch_twins
from rmjax.bench.suites import Network, Settings, tiny_resnet
from rmjax.cost import count_flops, count_macs, count_params
from rmjax.models.plain import PlainNet

# XLA's FLOPs vs `count_flops`: the program jax hands XLA (lowered) matches the count to
from rmjax.randomize import random_variables

# XLA's FLOPs vs `count_flops`: the program jax hands XLA (lowered) matches the count to
# 0.005% on every default network, and must to 0.1%. The compiled program, which runs, is
# reported beside it: up to 0.7% more in float32 (2.8% on the tiny network), as fusion
# recomputes a cheap elementwise producer inside each consumer (e.g. the ReLU that feeds both a
# structured conv and its copies); in bfloat16 up to 10% more, as XLA:CPU computes elementwise
# ops in float32 and counts the conversions.
FLOPS_TOLERANCE = 1e-3
# rmjax vs its PyTorch twin: a larger max |logit difference| than this times max(1, max |logit|)
# means they do not compute the same function (float32 round-off is ~1e-6 of the logits). TF32
# (GPU convolutions' default precision in both frameworks) and bfloat16 round to 10 and 7
# mantissa bits, ~1e-3 and ~1e-2 of each value: warning thresholds, not measurements.
TWIN_TOLERANCE = 1e-3
TWIN_TOLERANCE_TF32 = 3e-2
TWIN_TOLERANCE_BFLOAT16 = 1e-1


def twin_tolerance(meta) -> float:
  """The TWIN_TOLERANCE* that applies to a run (its meta: platform, dtype)."""
  if meta.get("dtype") == "bfloat16":
    return TWIN_TOLERANCE_BFLOAT16
  return TWIN_TOLERANCE if meta.get("platform") == "cpu" else TWIN_TOLERANCE_TF32


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Batches to warm up with, batches per timed repeat, and repeats (median and spread)."""

  warmup: int
  batches: int
  repeats: int


PAPER = Protocol(warmup=50, batches=50, repeats=3)
# On 2 CPU cores one batch of 128 of each default network takes ~21 s (RMNeXt-26's dense plain
# form alone 5 s): the paper's protocol would take over an hour, 2 + 3 x 4 batches 6 minutes.
CPU = Protocol(warmup=2, batches=4, repeats=3)
QUICK = Protocol(warmup=1, batches=2, repeats=1)


def default_protocol(platform_name: str) -> Protocol:
  return CPU if platform_name == "cpu" else PAPER


def device_info() -> dict[str, Any]:
  """What the results were measured on: device (CPU model or accelerator name), versions, date,
  jax's default matmul precision (None: the platform's default, TF32 convolutions on GPUs)."""
  device = jax.devices()[0]
  name = device.device_kind
  if device.platform == "cpu":
    name = cpu_model() or platform.processor() or name
  cores = torch_timing.cpu_count()
  return {
    "device": name,
    "platform": device.platform,
    "device_count": jax.device_count(),
    "cpu_count": cores,
    "jax_version": jax.__version__,
    "flax_version": flax.__version__,
    "python_version": platform.python_version(),
    # XLA:CPU's speed depends on these (rmjax.xla_cpu sets some on import).
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "jax_default_matmul_precision": getattr(jax.config, "jax_default_matmul_precision", None),
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }


def cpu_model() -> str | None:
  """The CPU's model name from /proc/cpuinfo (None where there is none)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def images(batch: int, size: int, seed: int = 0):
  """The benchmark's input batch, float32 in [0, 1); the same for every network."""
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), jnp.float32)


def batches(fn, args) -> Callable[[int], object]:
  """`run(n)`: n calls of `fn(*args)` (compiled) dispatched back to back, then waited for — the
  device never idles between batches, as in the paper's loop that synchronises once at the
  end."""
  return lambda n: jax.block_until_ready([fn(*args) for _ in range(n)])


def time_batches(runs: Sequence[Callable[[int], object]], protocol: Protocol) -> list[list[float]]:
  """Seconds per batch of each `run` (`run(n)` runs n batches and returns when they are done)
  in each timed repeat, after the warm-up. The runs take turns — repeat 1 of each, then repeat
  2 of each, ... — so that a change in the machine's load (another job starting) falls on
  every run alike and does not skew their ratio."""
  for run in runs:
    for _ in range(protocol.warmup):
      run(1)
  per_batch: list[list[float]] = [[] for _ in runs]
  for _ in range(protocol.repeats):
    for run, seconds in zip(runs, per_batch, strict=True):
      start = time.perf_counter()
      run(protocol.batches)
      seconds.append((time.perf_counter() - start) / protocol.batches)
  return per_batch


def _flops(stage) -> float:
  """ "flops" of a lowered or compiled program's cost analysis (NaN where XLA gives none)."""
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # older jax: one dict per computation
  return float((cost or {}).get("flops", float("nan")))


def input_dtype(net: Network):
  """The dtype of `net`'s variables, which its inputs are given in."""
  return jax.tree.leaves(net.variables)[0].dtype


# The speed columns of a row: imgs/s over the repeats (median, min, max, and each repeat's).
SPEED_KEYS = ("imgs_per_sec", "imgs_per_sec_min", "imgs_per_sec_max", "imgs_per_sec_repeats")


def speeds(prefix: str, batch: int, per_batch: Sequence[float]) -> dict:
  """The SPEED_KEYS, each with `prefix`, from seconds per batch in each repeat."""
  imgs = [batch / s for s in per_batch]
  values = (statistics.median(imgs), min(imgs), max(imgs), imgs)
  return {prefix + key: value for key, value in zip(SPEED_KEYS, values, strict=True)}


def measure(
  net: Network, batch: int, protocol: Protocol, beside: Sequence[Callable[[int], object]] = ()
) -> dict:
  """One row: size, cost, memory, compile time and speed of `net` at `batch`, plus its logits
  (under "logits", for logit differences; not part of the saved results). `beside`: other
  `run(n)`s timed in turn with this network (`time_batches`), their seconds per batch under
  "beside_seconds" (not saved either)."""
  x = images(batch, net.image_size).astype(input_dtype(net))
  start = time.perf_counter()
  lowered = jax.jit(net.apply).lower(net.variables, x)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  program_flops, xla_flops = _flops(lowered), _flops(compiled)
  flops = count_flops(net.apply, net.variables, x)
  # None where XLA has no count to check: its GPU cost analysis gives NaN for the lowered
  # program and leaves cuDNN/cuBLAS custom calls out of the compiled one (seen on an H200).
  agree = None if math.isnan(program_flops) else abs(program_flops / flops - 1) <= FLOPS_TOLERANCE
  memory = compiled.memory_analysis()
  peak = None
  if memory is not None:
    peak = (
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      + memory.temp_size_in_bytes
      - memory.alias_size_in_bytes
    )
  mine, *others = time_batches([batches(compiled, (net.variables, x)), *beside], protocol)
  return {
    "network": net.name,
    "group": net.group,
    "role": net.role,
    "mode": net.mode,
    "batch_size": batch,
    "image_size": net.image_size,
    "params": count_params(net.variables["params"]),
    "macs_per_image": count_macs(net.apply, net.variables, x) / batch,
    "analytical_flops_per_image": flops / batch,
    "xla_lowered_flops_per_image": program_flops / batch,
    "xla_flops_per_image": xla_flops / batch,
    "flops_ratio": xla_flops / flops,
    "flops_agree": agree if agree is None else bool(agree),
    "peak_memory_bytes": peak,
    "compile_seconds": compile_s,
    **speeds("", batch, mine),
    "logits": np.asarray(compiled(net.variables, x), np.float32),
    "beside_seconds": others,
  }


def log(message: str) -> None:
  """The progress display: one line on stderr, flushed."""
  print(message, file=sys.stderr, flush=True)


def run(
  networks: Sequence[Network],
  *,
  batch_sizes: Sequence[int],
  protocol: Protocol,
  progress: Callable[[str], None] = log,
  torch: torch_timing.Options | None = None,
  onnxruntime: onnx_timing.Options | None = None,
  on_row: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
  """Measures every network at every batch size. Adds the speed-up over its group's baseline
  and the max |logit difference| from its reference (None for a baseline / without one); with
  `torch` options, the PyTorch twin's numbers (`torch_columns`; and the compiled twin's), its
  batches timed in turn with rmjax's (`time_batches`); with `onnxruntime` options, each plain
  network's ONNX artefact likewise (`rmjax.bench.onnx_timing`). Calls `on_row(rows so far)` after
  each row (bench.py saves them there: a run stopped midway keeps what it measured)."""
  rows, total, start = [], len(networks) * len(batch_sizes), time.perf_counter()
  for batch in batch_sizes:
    logits: dict[int, np.ndarray] = {}  # by id() of the network
    baseline: dict[str, dict] = {}
    twins: dict[tuple, dict] = {}  # by id() of model and variables: the modes share them
    exported: dict[tuple, dict] = {}  # the ONNX artefacts, likewise, and by form
    for net in networks:
      peers, engines, key = {}, {}, (id(net.model), id(net.variables))
      if torch is not None and net.model is not None and torch_twins.supports(net.model):
        twins[key] = peers = twins.get(key) or twin_runs(net, batch, torch, progress)
      if onnxruntime is not None and onnx_timing.supports(net):
        form = (*key, onnx_timing.structured(net))
        exported[form] = engines = exported.get(form) or onnx_runs(
          net, batch, onnxruntime, progress
        )
      timed = [p for p in (*peers.values(), *engines.values()) if "run" in p]
      row = measure(net, batch, protocol, beside=[p["run"] for p in timed])
      logits[id(net)] = row.pop("logits")
      peer_seconds = dict(zip((id(p) for p in timed), row.pop("beside_seconds"), strict=True))
      if net.role == "baseline":
        baseline.setdefault(net.group, row)
      base = baseline.get(net.group)
      row["speedup"] = (
        row["imgs_per_sec"] / base["imgs_per_sec"] if base is not None and base is not row else None
      )
      row["default"] = net.default
      row["computes"] = net.name if net.reference is None else net.reference.name
      row["max_abs_logit_diff"] = None
      if net.reference is not None:
        ref = net.reference
        if id(ref) not in logits:  # a reference that is not timed itself (RepVGG's training form)
          x = images(batch, ref.image_size).astype(input_dtype(ref))
          logits[id(ref)] = np.asarray(jax.jit(ref.apply)(ref.variables, x), np.float32)
        row["max_abs_logit_diff"] = float(np.max(np.abs(logits[id(net)] - logits[id(ref)])))
      if torch is not None:
        eager, compiled = peers.get("eager"), peers.get("compiled") or {}
        for prefix, peer in (("torch_", eager), ("torch_compiled_", compiled)):
          seconds = peer_seconds.get(id(peer)) if peer else None
          row.update(torch_columns(net, row, logits[id(net)], seconds, peer, prefix))
        row["torch_compile_seconds"] = compiled.get("compile_seconds")
        row["torch_compile_timed_out"] = compiled.get("timed_out", False)
      if onnxruntime is not None:
        row.update(_engine_columns(row, engines, peer_seconds))
      rows.append(row)
      on_row(rows)
      _log_row(progress, f"{len(rows)}/{total} {time.perf_counter() - start:.0f}s", net, row)
  return rows


def _log_row(progress: Callable[[str], None], counter: str, net: Network, row: dict) -> None:
  progress(
    f"[{counter}] {net.name}, batch {row['batch_size']}: "
    f"compiled in {row['compile_seconds']:.1f}s, {row['imgs_per_sec']:.1f} imgs/s "
    f"({row['imgs_per_sec_min']:.1f}-{row['imgs_per_sec_max']:.1f}), "
    f"XLA/analytical FLOPs {row['flops_ratio']:.4f}"
  )
  for prefix, what in (("torch_", "PyTorch twin"), ("torch_compiled_", "compiled twin")):
    if row.get(f"{prefix}imgs_per_sec") is not None:
      shared = " (of the dense form)" if net.mode not in ("", "dense") else ""
      progress(
        f"  {what}{shared}: {row[f'{prefix}imgs_per_sec']:.1f} imgs/s "
        f"({row[f'{prefix}imgs_per_sec_min']:.1f}-{row[f'{prefix}imgs_per_sec_max']:.1f}), "
        f"rmjax / PyTorch {row[f'{prefix}ratio']:.2f}, "
        f"max |logit diff| {row[f'{prefix}max_abs_logit_diff']:.1e}"
      )
  for engine in (onnx_timing.ENGINE, onnx_timing.INT8):
    if row.get(f"{engine}_imgs_per_sec") is not None:
      progress(
        f"  {engine}: {row[f'{engine}_imgs_per_sec']:.1f} imgs/s "
        f"({row[f'{engine}_imgs_per_sec_min']:.1f}-{row[f'{engine}_imgs_per_sec_max']:.1f}), "
        f"max |logit diff| {row[f'{engine}_max_abs_logit_diff']:.1e}"
      )


def onnx_runs(net: Network, batch: int, options, progress: Callable[[str], None]) -> dict:
  """`onnx_timing.artefacts` of `net` on the benchmark batch; says which were refused, and why."""
  engines = onnx_timing.artefacts(net, np.asarray(images(batch, net.image_size)), options)
  for engine, peer in engines.items():
    if "refused" in peer:
      progress(f"  {engine} artefact of {net.name}: refused, {peer['refused']}")
  return engines


def _engine_columns(row: dict, engines: dict, seconds: dict) -> dict:
  """`onnx_timing.columns` of `row`, from the seconds per batch of each artefact timed (by id())."""
  batch = row["batch_size"]
  timed = {
    e: speeds(f"{e}_", batch, seconds[id(p)]) for e, p in engines.items() if id(p) in seconds
  }
  return onnx_timing.columns(row, engines, timed)


def twin_runs(net: Network, batch: int, options, progress: Callable[[str], None]) -> dict:
  """The twin of `net` on the benchmark batch: {"eager": {"run", "logits"}} and, where
  `options.compiles(net.name)`, "compiled": {"run", "logits", "compile_seconds"}, or
  {"timed_out": True} where compiling took longer than `options.compile_timeout`."""
  x = np.asarray(images(batch, net.image_size))
  run, logits = torch_timing.inference(net, x, options)
  peers = {"eager": {"run": run, "logits": logits}}
  if options.compiles(net.name):
    try:
      run, logits, seconds = torch_timing.compiled_inference(net, x, options)
      peers["compiled"] = {"run": run, "logits": logits, "compile_seconds": seconds}
      progress(f"  torch.compile of {net.name}'s twin: {seconds:.1f}s")
    except torch_timing.CompileTimeout as e:
      peers["compiled"] = {"timed_out": True}
      progress(f"  torch.compile of {net.name}'s twin: abandoned, {e}")
  return peers


def torch_columns(
  net: Network,
  row: dict,
  logits: np.ndarray,
  seconds: list[float] | None,
  peer: dict | None,
  prefix: str = "torch_",
) -> dict:
  """The PyTorch columns of `net`'s `row`, each name starting with `prefix`, from its twin's
  seconds per batch and its logits (`peer["logits"]`; None: no twin timed): imgs/s (median,
  min, max, repeats), `ratio` (rmjax / PyTorch imgs/s), `max_abs_logit_diff` from rmjax's
  `logits` (whose max |logit| is `max_abs_logit`), `twin` (what the twin computes: "dense" for
  a plain network in any mode, "" for another network). All None without a twin."""
  columns = {f"{prefix}{k}": None for k in (*SPEED_KEYS, "ratio", "max_abs_logit_diff", "twin")}
  columns["max_abs_logit"] = float(np.max(np.abs(logits)))
  if seconds is None:
    return columns
  columns.update(speeds(prefix, row["batch_size"], seconds))
  columns[f"{prefix}ratio"] = row["imgs_per_sec"] / columns[f"{prefix}imgs_per_sec"]
  columns[f"{prefix}max_abs_logit_diff"] = float(np.max(np.abs(peer["logits"] - logits)))
  columns[f"{prefix}twin"] = "dense" if isinstance(net.model, PlainNet) else ""
  return columns


def twin_disagrees(row: dict, tolerance: float = TWIN_TOLERANCE) -> bool:
  """Whether a row's PyTorch twin (eager or compiled) computed other logits than rmjax, by more
  than `tolerance` x max(1, max |logit|) (`twin_tolerance`)."""
  diffs = (row.get(f"{p}max_abs_logit_diff") for p in ("torch_", "torch_compiled_"))
  limit = tolerance * max(1.0, row.get("max_abs_logit") or 0.0)
  return any(d is not None and d > limit for d in diffs)


def time_convert(
  name: str, *, image_size: int = 224, keep_bn: bool = False, calls: int = 5
) -> dict:
  """`jax.jit(rm_convert)` of the model `name` (a models.create name, or "tiny") with random
  variables: tracing + lowering and compile time, then the median and min of `calls` calls."""
  settings = Settings(image_size=image_size)
  model = tiny_resnet(settings) if name == "tiny" else settings.create(name)
  variables = random_variables(
    model, jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  )
  start = time.perf_counter()
  lowered = transforms.rm_convert_jit.lower(model, variables, keep_bn=keep_bn)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  _, plain_vars = jax.block_until_ready(compiled(variables))
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(compiled(variables))
    times.append(time.perf_counter() - start)
  return {
    "model": name,
    "image_size": image_size,
    "keep_bn": keep_bn,
    "params_before": count_params(variables["params"]),
    "params_after": count_params(plain_vars["params"]),
    "lower_seconds": lower_s,
    "compile_seconds": compile_s,
    "call_ms": 1e3 * statistics.median(times),
    "call_ms_min": 1e3 * min(times),
  }
