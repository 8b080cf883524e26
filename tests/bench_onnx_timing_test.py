"""rmjax.bench.onnx_timing: each plain network's ONNX export is timed in ONNX Runtime beside
rmjax (no speed is asserted), an export that computes something else is refused and not timed,
a missing onnxruntime is skipped with the pip command, and the int8 hook is optional."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from rmjax.bench import measure, onnx_timing, serving, suites  # noqa: E402
from rmjax.bench import report as bench_report  # noqa: E402
from rmjax.deploy import onnx as onnx_export  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = measure.Protocol(warmup=1, batches=1, repeats=2)
ORT = onnx_timing.Options(threads=2)


def _run(networks, batch_sizes=(1, 2), options=ORT):
  messages = []
  rows = measure.run(
    networks,
    batch_sizes=batch_sizes,
    protocol=QUICK,
    onnxruntime=options,
    progress=messages.append,
  )
  return rows, messages


def _report(rows):
  meta = {
    **measure.device_info(),
    "dtype": "float32",
    "image_size": 32,
    "protocol": {"warmup": 1, "batches": 1, "repeats": 2},
  }
  meta.update(onnx_timing.describe(onnx_timing.Options(threads=2), {}))
  return bench_report.markdown({"meta": meta, "results": rows})


@pytest.fixture(scope="module")
def tiny_networks():
  return suites.build(["tiny"])


def test_onnxruntime_columns_of_each_plain_network_at_batch_1_and_2(tiny_networks):
  rows, _ = _run(tiny_networks)
  assert [(r["network"], r["batch_size"]) for r in rows] == [
    (n.name, b) for b in (1, 2) for n in tiny_networks
  ]
  for r in rows:
    if r["role"] == "baseline":  # the residual network has no ONNX artefact
      assert r["onnxruntime_imgs_per_sec"] is None and r["onnxruntime_refused"] is None
      continue
    assert np.isfinite(r["onnxruntime_imgs_per_sec"]) and r["onnxruntime_imgs_per_sec"] > 0
    assert len(r["onnxruntime_imgs_per_sec_repeats"]) == QUICK.repeats
    assert r["onnxruntime_max_abs_logit_diff"] < 1e-4 and r["onnxruntime_refused"] is None
    assert r["onnxruntime_ratio"] == pytest.approx(
      r["onnxruntime_imgs_per_sec"] / r["imgs_per_sec"]
    )
    assert r["computes"] == "tiny ResNet"
  markdown = _report(rows)
  assert (
    "| network (batch 2) | XLA imgs/s | PyTorch eager imgs/s | ONNX Runtime imgs/s |" in markdown
  )
  assert "ONNX Runtime, tiny RMNet" in markdown or "XLA, tiny" in markdown
  assert [(e["computes"], e["batch_size"]) for e in serving.best(rows)] == [
    ("tiny ResNet", 1),
    ("tiny ResNet", 2),
  ]


def test_an_export_that_differs_is_refused_and_not_timed(tiny_networks, monkeypatch):
  to_onnx = onnx_export.to_onnx

  def corrupted(*args, **kwargs):
    model = to_onnx(*args, **kwargs)
    kernel = next(t for t in model.graph.initializer if t.name.endswith("/kernel"))
    kernel.raw_data = (np.frombuffer(kernel.raw_data, np.float32) * 1.5).tobytes()
    return model

  monkeypatch.setattr(onnx_export, "to_onnx", corrupted)
  plain = [n for n in tiny_networks if n.mode == "dense"]
  (row,), messages = _run(plain, batch_sizes=[1])
  assert row["onnxruntime_imgs_per_sec"] is None and row["onnxruntime_ratio"] is None
  assert "differ from the JAX plain network's" in row["onnxruntime_refused"]
  assert row["onnxruntime_max_abs_logit_diff"] > 1e-4
  assert any("onnxruntime artefact of tiny RMNet (dense): refused" in m for m in messages)
  assert "| refused: its logits differ" in _report([row])


def test_int8_hook_is_skipped_without_the_quantize_module(monkeypatch):
  monkeypatch.setitem(sys.modules, "rmjax.deploy.quantize", None)
  assert onnx_timing.quantizer() is None
  assert "rmjax.deploy.quantize.quantize_model does not exist" in onnx_timing.int8_unavailable()


def test_int8_hook_times_what_quantize_model_returns(tiny_networks, monkeypatch):
  calls = []

  def quantize_model(model, calibration):  # a stand-in: the float model, unchanged
    calls.append([batch.shape for batch in calibration])
    return model

  fake = types.ModuleType("rmjax.deploy.quantize")
  fake.quantize_model = quantize_model
  monkeypatch.setitem(sys.modules, "rmjax.deploy.quantize", fake)
  assert onnx_timing.int8_unavailable() is None
  plain = [n for n in tiny_networks if n.mode == "dense"]
  options = onnx_timing.Options(threads=2, layout="nchw", int8=True)
  (row,), _ = _run(plain, batch_sizes=[2], options=options)
  assert calls == [[(2, 3, 32, 32)]]  # calibrated on the bench batch, in the artefact's layout
  assert row["onnxruntime_int8_imgs_per_sec"] > 0 and row["onnxruntime_imgs_per_sec"] > 0
  assert "ORT int8 imgs/s" in _report([row])


@pytest.fixture
def without_onnxruntime(tmp_path):
  """An environment in which `import onnxruntime` fails, as where it is not installed."""
  (tmp_path / "onnxruntime").mkdir()
  (tmp_path / "onnxruntime" / "__init__.py").write_text("raise ImportError('no ort here')\n")
  return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}


def test_without_onnxruntime_the_engine_is_skipped_with_the_pip_command(
  without_onnxruntime, tmp_path
):
  bench = [sys.executable, "bench.py", "--quick", "--notorch", "--convert="]
  result = subprocess.run(
    [*bench, "--noinference", f"--out_dir={tmp_path}"],
    cwd=ROOT,
    env=without_onnxruntime,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "onnxruntime: skipped, onnxruntime is not installed" in result.stderr
  assert onnx_timing.INSTALL in result.stderr
  assert "Skipped: onnxruntime (onnxruntime is not installed" in (tmp_path / "bench.md").read_text()
  result = subprocess.run(
    [*bench, "--engines=xla,onnxruntime"],
    cwd=ROOT,
    env=without_onnxruntime,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  assert "error: --engines=onnxruntime cannot run" in result.stderr
  assert onnx_timing.INSTALL in result.stderr


def test_a_quantizer_that_raises_refuses_the_int8_row(tiny_networks, monkeypatch):
  def quantize_model(model, calibration):
    raise TypeError("quantize_model() takes other arguments")

  fake = types.ModuleType("rmjax.deploy.quantize")
  fake.quantize_model = quantize_model
  monkeypatch.setitem(sys.modules, "rmjax.deploy.quantize", fake)
  plain = [n for n in tiny_networks if n.mode == "dense"]
  (row,), _ = _run(plain, batch_sizes=[1], options=onnx_timing.Options(threads=2, int8=True))
  assert row["onnxruntime_imgs_per_sec"] > 0 and row["onnxruntime_int8_imgs_per_sec"] is None
  assert "quantize_model raised TypeError" in row["onnxruntime_int8_refused"]


def test_the_int8_row_times_rmjax_own_quantizer(tiny_networks):
  pytest.importorskip("onnxruntime.quantization")
  assert onnx_timing.int8_unavailable() is None  # rmjax.deploy.quantize exists
  plain = [n for n in tiny_networks if n.mode == "dense"]
  options = onnx_timing.Options(threads=2, int8=True)
  (row,), _ = _run(plain, batch_sizes=[2], options=options)
  assert row["onnxruntime_int8_refused"] is None, row["onnxruntime_int8_refused"]
  assert row["onnxruntime_int8_imgs_per_sec"] > 0
  # A real int8 model: close to the float logits, but not the float model itself.
  assert 0 < row["onnxruntime_int8_max_abs_logit_diff"]
  (entry,) = serving.best([row])
  assert entry["int8"][0] == row["onnxruntime_int8_imgs_per_sec"]
  best_float32 = max(row["imgs_per_sec"], row["onnxruntime_imgs_per_sec"])
  assert entry["int8_vs_float32"] == pytest.approx(entry["int8"][0] / best_float32)
  assert "int8 ÷ best float32" in "\n".join(serving.best_table([row]))
