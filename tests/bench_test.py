"""bench.py --quick: it runs and writes its report (no speed is asserted), and the pieces of
rmjax.bench.measure / rmjax.bench.report it is made of; with torch installed, the PyTorch column and
the training-step table; without it, rmjax alone (and a clear error if --torch asks for it)."""

import json
import os
import subprocess
import sys

import pytest

from rmjax.bench import measure, suites
from rmjax.bench import report as bench_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  docs = out / "benchmarks.md"
  docs.write_text("# Benchmarks\n\nHand-written notes stay.\n")
  result = subprocess.run(
    [
      sys.executable,
      "bench.py",
      "--quick",
      "--train_steps",
      f"--out_dir={out}",
      "--write_docs",
      f"--docs={docs}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return out, result


def test_quick_run_writes_json_markdown_and_plot(quick_run):
  out, result = quick_run
  assert (out / "bench.png").stat().st_size > 0
  markdown = (out / "bench.md").read_text()
  assert markdown in result.stdout
  assert "| tiny RMNet (structured) |" in markdown
  # Progress: a line per measurement on stderr.
  assert "[3/3 " in result.stderr and "rm_convert tiny keep_bn" in result.stderr


def test_quick_run_json_records_device_versions_and_agreeing_flops(quick_run):
  out, _ = quick_run
  report = json.loads((out / "bench.json").read_text())
  meta = report["meta"]
  for key in ("device", "platform", "jax_version", "flax_version", "date", "protocol"):
    assert meta[key], key
  rows = report["results"]
  assert [r["network"] for r in rows] == [
    "tiny ResNet",
    "tiny RMNet (dense)",
    "tiny RMNet (structured)",
  ]
  for r in rows:
    assert r["flops_agree"], r
    lowered = r["xla_lowered_flops_per_image"] / r["analytical_flops_per_image"]
    assert abs(lowered - 1) <= measure.FLOPS_TOLERANCE
    assert 0.95 < r["flops_ratio"] < 1.05  # the compiled program, see measure.FLOPS_TOLERANCE
    assert r["imgs_per_sec"] > 0 and r["params"] > 0 and r["peak_memory_bytes"] > 0
  baseline, dense, structured = rows
  assert baseline["speedup"] is None and dense["speedup"] > 0
  assert dense["max_abs_logit_diff"] < 1e-4 and structured["max_abs_logit_diff"] < 1e-4
  # RM's extra multiply-adds are Dirac zeros, and structured execution skips them all.
  assert structured["macs_per_image"] == baseline["macs_per_image"] < dense["macs_per_image"]
  assert [(c["model"], c["keep_bn"]) for c in report["convert"]] == [
    ("tiny", False),
    ("tiny", True),
  ]


def test_quick_run_fills_its_docs_section_and_keeps_the_rest(quick_run):
  out, _ = quick_run
  docs = (out / "benchmarks.md").read_text()
  assert docs.startswith("# Benchmarks\n\nHand-written notes stay.\n")
  assert docs.count("<!-- bench:cpu -->") == 1 and "| tiny ResNet |" in docs
  # One batch size: no plot against batch size in the docs (bench.png is in --out_dir).
  assert "benchmarks_cpu.png" not in docs and not (out / "benchmarks_cpu.png").exists()
  bench_report.update_docs(str(out / "benchmarks.md"), "cpu", "replaced")
  docs = (out / "benchmarks.md").read_text()
  assert "<!-- bench:cpu -->\nreplaced\n<!-- /bench:cpu -->" in docs
  assert "| tiny ResNet |" not in docs and "Hand-written notes stay." in docs


def test_unknown_suites_and_modes_are_named():
  with pytest.raises(ValueError, match="unknown suite.*nope"):
    suites.build(["nope"])
  with pytest.raises(ValueError, match="unknown plain mode.*fast"):
    suites.build(["tiny"], suites.Settings(modes=("fast",)))


def test_quick_run_times_the_pytorch_twins_beside_rmjax(quick_run):
  pytest.importorskip("torch")
  out, result = quick_run
  report = json.loads((out / "bench.json").read_text())
  meta = report["meta"]
  assert meta["torch_version"] and meta["torch_threads"] == meta["cpu_count"]
  for r in report["results"]:
    assert r["torch_imgs_per_sec"] > 0 and len(r["torch_imgs_per_sec_repeats"]) == 1
    assert r["torch_ratio"] == pytest.approx(r["imgs_per_sec"] / r["torch_imgs_per_sec"])
    assert r["torch_max_abs_logit_diff"] < 1e-4  # same weights, same function
  baseline, dense, structured = report["results"]
  assert baseline["torch_twin"] == "" and dense["torch_twin"] == structured["torch_twin"] == "dense"
  # The structured mode has no twin of its own: it is compared with the dense form's (timed
  # again, in turn with it).
  assert structured["torch_max_abs_logit_diff"] < 1e-4
  markdown = (out / "bench.md").read_text()
  assert "| PyTorch imgs/s | rmjax / PyTorch |" in markdown
  assert f"PyTorch {meta['torch_version']}" in markdown
  assert "  PyTorch twin (of the dense form):" in result.stderr


def test_quick_run_times_the_onnx_artefacts_beside_rmjax(quick_run):
  pytest.importorskip("onnxruntime")
  out, _ = quick_run
  report = json.loads((out / "bench.json").read_text())
  assert report["meta"]["onnxruntime_version"] and report["meta"]["onnxruntime_threads"] > 0
  baseline, dense, structured = report["results"]
  assert baseline["onnxruntime_imgs_per_sec"] is None  # a residual network has no ONNX form
  for r in (dense, structured):
    assert r["onnxruntime_imgs_per_sec"] > 0 and r["onnxruntime_max_abs_logit_diff"] < 1e-4
  assert (
    "| network (batch 8) | XLA imgs/s | PyTorch eager imgs/s |" in (out / "bench.md").read_text()
  )


def test_quick_run_times_a_training_step(quick_run):
  out, result = quick_run
  report = json.loads((out / "bench.json").read_text())
  (row,) = report["train"]  # the tiny suite's one trainable network
  assert row["network"] == "tiny ResNet" and row["batch_size"] == 8
  assert row["imgs_per_sec"] > 0 and row["compile_seconds"] > 0 and row["first_loss"] > 0
  assert "[train 1/1 " in result.stderr
  markdown = (out / "bench.md").read_text()
  assert "| training step | batch |" in markdown and "| tiny ResNet | 8 |" in markdown
  try:
    import torch  # noqa: F401
  except ImportError:
    assert row["torch_train_imgs_per_sec"] is None
    return
  assert row["torch_train_imgs_per_sec"] > 0
  assert row["torch_ratio"] == pytest.approx(row["imgs_per_sec"] / row["torch_train_imgs_per_sec"])
  assert row["first_loss_diff"] < 1e-4  # the same loss before the first update


def test_markdown_without_torch_has_no_pytorch_columns(quick_run):
  out, _ = quick_run
  report = json.loads((out / "bench.json").read_text())
  for key in ("torch_version", "torch_threads"):
    report["meta"].pop(key, None)
  lines = bench_report.markdown(report).splitlines()
  header = next(line for line in lines if line.startswith("| network (batch 8)"))
  assert header.endswith("| imgs/s | speed-up | max abs logit diff |")
  assert "PyTorch" not in bench_report.header(report["meta"])


@pytest.fixture
def without_torch(tmp_path):
  """An environment in which `import torch` fails, as where it is not installed."""
  (tmp_path / "torch").mkdir()
  (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
  return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}


def test_without_torch_rmjax_imports_and_torch_is_an_error_only_when_asked(without_torch):
  code = (
    "from rmjax.bench import measure, torch_timing, training, torch_twins\n"
    "assert not torch_timing.available()\n"
    "try:\n"
    "  torch_twins.to_nchw([[[[0.0]]]])\n"
    "except ImportError as e:\n"
    "  print(e)\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], env=without_torch, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "pip install 'rmjax[interop]'" in result.stdout
  result = subprocess.run(
    [sys.executable, "bench.py", "--quick", "--torch"],
    cwd=ROOT,
    env=without_torch,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  assert "error: --torch needs PyTorch, which is not installed" in result.stderr
