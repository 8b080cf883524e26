"""Runs a few training steps in a fresh process (fake devices / jax.distributed need one).

python tests/train_worker.py sharded OUT_DIR          # 8 fake CPU devices: 1 vs 8 devices
python tests/train_worker.py distributed OUT_DIR I N PORT
python tests/train_worker.py load OUT_DIR K RUN...    # K fake CPU devices: convert + evaluate
"""

import json
import os
import sys

mode, out = sys.argv[1], sys.argv[2]
if mode in ("sharded", "load"):
  count = 8 if mode == "sharded" else int(sys.argv[3])
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from train_config import tiny_config  # noqa: E402

from rmjax import evaluation, export, run, train  # noqa: E402


def save(path, state):
  save_variables(path, {"params": state.params, "batch_stats": state.batch_stats})


def save_variables(path, variables):
  flat = traverse_util.flatten_dict(variables, sep="/")
  np.savez(path, **{k: np.asarray(jax.device_get(v)) for k, v in flat.items()})


if mode == "sharded":
  assert jax.device_count() == 8, jax.devices()
  config = tiny_config(num_train_steps=3, batch_size=16)
  for n in (1, 8):
    result = train.train_and_evaluate(
      config, os.path.join(out, f"work{n}"), devices=jax.devices()[:n]
    )
    save(os.path.join(out, f"devices{n}.npz"), result.state)
elif mode == "distributed":
  index, count, port = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
  jax.distributed.initialize(f"localhost:{port}", num_processes=count, process_id=index)
  assert jax.process_count() == count
  config = tiny_config(num_train_steps=2, batch_size=8)
  result = train.train_and_evaluate(config, os.path.join(out, "work"))
  save(os.path.join(out, f"process{index}.npz"), result.state)
elif mode == "load":
  assert jax.device_count() == int(sys.argv[3]), jax.devices()
  for i, path in enumerate(sys.argv[4:]):
    loaded = run.load_run(path)
    save_variables(os.path.join(out, f"loaded{i}.npz"), loaded.variables)
    export.export_plain(loaded, os.path.join(out, f"plain{i}"))  # verified against `loaded`
    rows = evaluation.evaluate_paths([path], batch_size=500)
    with open(os.path.join(out, f"rows{i}.json"), "w") as f:
      json.dump(rows, f)
else:
  raise SystemExit(f"unknown mode {mode}")
