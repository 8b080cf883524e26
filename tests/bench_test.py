"""bench.py --quick: it runs and writes its report (no speed is asserted), and the pieces of
rmjax.bench / rmjax.bench_report it is made of."""

import json
import os
import subprocess
import sys

import pytest

from rmjax import bench, bench_report, bench_suites

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  docs = out / "benchmarks.md"
  docs.write_text("# Benchmarks\n\nHand-written notes stay.\n")
  result = subprocess.run(
    [sys.executable, "bench.py", "--quick", f"--out_dir={out}", "--write_docs", f"--docs={docs}"],
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
    assert abs(lowered - 1) <= bench.FLOPS_TOLERANCE
    assert 0.95 < r["flops_ratio"] < 1.05  # the compiled program, see bench.FLOPS_TOLERANCE
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
  assert "(benchmarks_cpu.png)" in docs and (out / "benchmarks_cpu.png").stat().st_size > 0
  bench_report.update_docs(str(out / "benchmarks.md"), "cpu", "replaced")
  docs = (out / "benchmarks.md").read_text()
  assert "<!-- bench:cpu -->\nreplaced\n<!-- /bench:cpu -->" in docs
  assert "| tiny ResNet |" not in docs and "Hand-written notes stay." in docs


def test_unknown_suites_and_modes_are_named():
  with pytest.raises(ValueError, match="unknown suite.*nope"):
    bench_suites.build(["nope"])
  with pytest.raises(ValueError, match="unknown plain mode.*fast"):
    bench_suites.build(["tiny"], bench_suites.Settings(modes=("fast",)))
