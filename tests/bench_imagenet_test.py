"""The GPU benchmark's code paths on the CPU (issue 22): the ImageNet suite (Table 3) at tiny
sizes, the default execution mode beside dense and structured, PyTorch twins' device choice,
torch.compile with its time limit, the bfloat16 training step beside AMP, the precision check
and the conv-by-conv timings, all in one `bench.py` run of tiny networks (no speed asserted)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.bench import precision, suites, torch_timing, training
from rmjax.bench import report as bench_report
from rmjax.models import structured as structured_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch_installed = torch_timing.available()


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("imagenet")
  docs = out / "benchmarks.md"
  docs.write_text("# B\n\n<!-- bench:gpu-imagenet -->\npending\n<!-- /bench:gpu-imagenet -->\n")
  args = [
    "--suites=resnet50",
    "--tiny_models",
    "--image_size=32",
    "--quick",
    "--batch_sizes=2",
    "--modes=dense,structured,auto",
    "--train_steps",
    "--train_dtype=bfloat16",
    "--precision_check",
    "--precision_batch=2",
    "--layer_timings",
    "--convert=",
    f"--out_dir={out}",
    "--write_docs",
    f"--docs={docs}",
    "--docs_section=gpu-imagenet",
  ]
  if torch_installed:  # dynamo alone: the flag's path without minutes of inductor on a CPU
    args += ["--torch_compile=ResNet-50", "--torch_compile_backend=eager"]
  result = subprocess.run(
    [sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return out, json.loads((out / "bench.json").read_text()), result


def test_imagenet_rows_and_the_default_mode(imagenet_run):
  _, report, _ = imagenet_run
  assert report["meta"]["tiny_models"] and "stopped" not in report["meta"]
  rows = {r["network"]: r for r in report["results"]}
  # On the CPU the rule runs every conv that skips anything structured; RMNet-50's projection
  # merges skip nothing (a 1x1 conv either way), so the default is a third program, timed.
  assert list(rows) == ["ResNet-50", "RMNet-50 (dense)", "RMNet-50 (structured)", "RMNet-50 (auto)"]
  assert [r["default"] for r in rows.values()] == [False, False, False, True]
  dense, structured, auto = (rows[f"RMNet-50 ({m})"] for m in ("dense", "structured", "auto"))
  assert structured["macs_per_image"] == auto["macs_per_image"] < dense["macs_per_image"]
  for r in (dense, structured, auto):
    assert r["max_abs_logit_diff"] < 1e-4


def test_imagenet_markdown_has_table3_and_fills_the_pending_section(imagenet_run):
  out, report, _ = imagenet_run
  markdown = (out / "bench.md").read_text()
  assert "| ResNet-50 | 1252.1 | 1.00 |" in markdown  # the paper's row beside the measured one
  assert "| RMNet-50 (auto) — default |  |  |" in markdown  # not in Table 3
  assert "RMNet-50: mixed, per conv" in markdown
  assert "**Tiny architectures**" in markdown
  docs = (out / "benchmarks.md").read_text()
  assert "pending" not in docs and "## GPU-IMAGENET: " in docs and "--tiny_models" in docs
  assert ".png" not in docs  # one batch size: no plot against batch size


@pytest.mark.skipif(not torch_installed, reason="needs torch")
def test_imagenet_twins_eager_and_compiled_on_the_cpu(imagenet_run):
  _, report, result = imagenet_run
  meta = report["meta"]
  assert meta["torch_device"] == "cpu" and not meta["torch_channels_last"]
  assert meta["torch_compile"] == ["ResNet-50"] and meta["torch_compile_backend"] == "eager"
  rows = report["results"]
  for r in rows:
    assert r["torch_max_abs_logit_diff"] < 1e-4 and r["torch_imgs_per_sec"] > 0
  compiled = [r for r in rows if r["torch_compiled_imgs_per_sec"] is not None]
  assert [r["network"] for r in compiled] == ["ResNet-50"]
  assert compiled[0]["torch_compile_seconds"] > 0 and not compiled[0]["torch_compile_timed_out"]
  assert compiled[0]["torch_compiled_max_abs_logit_diff"] < 1e-4
  assert "torch.compile of ResNet-50's twin" in result.stderr
  assert "| torch.compile imgs/s | compiled ÷ ResNet-50 |" in bench_report.markdown(report)


def test_imagenet_bfloat16_training_step_beside_amp(imagenet_run):
  _, report, _ = imagenet_run
  (row,) = report["train"]
  assert row["network"] == "ResNet-50" and row["compute_dtype"] == "bfloat16"
  assert np.isfinite(row["first_loss"]) and row["imgs_per_sec"] > 0
  if torch_installed:  # AMP: the same loss to bfloat16's round-off (8 bits)
    assert row["torch_train_imgs_per_sec"] > 0
    assert row["first_loss_diff"] < 0.02 * row["first_loss"]


def test_imagenet_precision_check_and_layer_timings(imagenet_run):
  _, report, _ = imagenet_run
  precision = report["precision"]
  assert [r["network"] for r in precision] == [
    "RMNet-50 (dense)",
    "RMNet-50 (structured)",
    "RMNet-50 (auto)",
  ]
  for r in precision:  # on the CPU the default precision is full float32
    assert r["max_abs_logit_diff_default"] < 1e-4 and r["max_abs_logit_diff_highest"] < 1e-4
  layers = report["layers"]
  assert layers and {r["network"] for r in layers} == {"RMNet-50"}
  assert {r["kind"] for r in layers} == {"pointwise", "grouped"}  # a bottleneck's
  for r in layers:
    assert 0 <= r["saving"] < 1 and r["dense_ms"] > 0 and r["structured_ms"] > 0
    assert r["rule"] == (r["saving"] > 0)  # the CPU's rule
  # A conv stands for every layer of its shape: together they are the structured ones, three
  # in each of the tiny RMNet-50's three blocks.
  assert sum(r["count"] for r in layers) == 9


def test_imagenet_suite_is_table3_in_order():
  assert list(suites.IMAGENET)[0] == "resnet50"  # the baseline of the ratios first
  tiny = suites.Settings(image_size=32, tiny=True, modes=("dense",))
  nets = suites.build(["rmnext41x4_8"], tiny)
  assert [n.name for n in nets] == ["RMNeXt-41x4_8", "RMNeXt-41x4_8 plain (dense)"]
  assert nets[0].model.stem == "imagenet" and nets[0].model.num_classes == 1000
  assert {suites.PAPER_IMAGENET[g][0] for g in suites.PAPER_IMAGENET} == {"baseline", "plain"}
  assert set(suites.PAPER_IMAGENET) == {
    "ResNet-50",
    "ResNet-101",
    "ResNet-152",
    *(f"RMNeXt-{p.removeprefix('rmnext')}" for p in suites.IMAGENET if p.startswith("rmnext")),
  }
  assert suites.select(nets, ["RMNeXt-41x4_8 plain (dense)"]) == nets[1:]
  with pytest.raises(ValueError, match="no network.*RMNeXt-99"):
    suites.select(nets, ["RMNeXt-99"])


def test_auto_is_timed_only_where_it_is_another_program(monkeypatch):
  settings = suites.Settings(image_size=32, tiny=True, modes=("dense", "structured", "auto"))
  # RMNet-18 saves multiply-adds in every structured conv: the default is the structured form.
  nets = suites.build(["resnet18"], settings)
  assert [(n.mode, n.default) for n in nets] == [
    ("", False),
    ("dense", False),
    ("structured", True),
  ]
  # Where the rule never runs structured, the default is the dense form.
  monkeypatch.setitem(structured_lib.MIN_SAVING, "cpu", {})
  nets = suites.build(["resnet18"], settings)
  assert [(n.mode, n.default) for n in nets] == [
    ("", False),
    ("dense", True),
    ("structured", False),
  ]


def test_table3_ratios_are_each_frameworks_own():
  def row(network, group, role, rmjax, torch=None):
    return {
      "network": network,
      "group": group,
      "role": role,
      "batch_size": 128,
      "imgs_per_sec": rmjax,
      "torch_imgs_per_sec": torch,
      "torch_imgs_per_sec_min": torch,
      "torch_imgs_per_sec_max": torch,
    }

  rows = [
    row("ResNet-50", "ResNet-50", "baseline", 1000.0, 500.0),
    row("RMNeXt-50x6_32", "RMNeXt-50x6_32", "baseline", 300.0, 100.0),
    row("RMNeXt-50x6_32 plain (dense)", "RMNeXt-50x6_32", "plain", 600.0, 250.0),
    row("ResNet-18", "ResNet-18", "baseline", 5000.0),  # not in Table 3
  ]
  lines = bench_report.table3_table(rows, 128)
  assert len(lines) == 2 + 3
  assert lines[2].startswith("| ResNet-50 | 1252.1 | 1.00 | 1000.0 | 1.00 | 500.0 | 1.00 |")
  assert lines[3] == "| RMNeXt-50x6_32 |  |  | 300.0 | 0.30 | 100.0 | 0.20 |"
  assert lines[4] == "| RMNeXt-50x6_32 plain (dense) | 713.8 | 0.57 | 600.0 | 0.60 | 250.0 | 0.50 |"
  assert bench_report.table3_table(rows[1:], 128) == []  # no ResNet-50: no ratios


def test_bfloat16_training_step_computes_in_bfloat16():
  nets = suites.build(["tiny"], suites.Settings(image_size=16, modes=()))
  model, variables = nets[0].model, nets[0].variables
  tx = training.optimizer()
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  x, y = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,), jnp.int32)

  def products(compute_dtype):
    text = training.sgd_step(model, tx, compute_dtype).lower(*state, x, y).as_text()
    lines = [ln for ln in text.splitlines() if "convolution" in ln or "dot_general" in ln]
    assert lines
    return lines

  # Every conv and matmul, forward and backward, in bfloat16; float32 master weights.
  assert all("xbf16>" in ln and "xf32>" not in ln for ln in products("bfloat16"))
  assert not any("bf16" in ln for ln in products("float32"))
  out = training.sgd_step(model, tx, "bfloat16")(*jax.tree.map(jnp.copy, state), x, y)
  assert {a.dtype for a in jax.tree.leaves(out[0])} == {jnp.dtype("float32")}


def test_twins_run_beside_jax_on_its_device(monkeypatch):
  assert torch_timing.device("cpu") == "cpu"
  with pytest.raises(ValueError, match="no PyTorch twins on jax's platform 'tpu'"):
    torch_timing.device("tpu")
  if not torch_installed:
    return
  import torch

  monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
  assert torch_timing.device("gpu") == "cuda"
  monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
  with pytest.raises(ValueError, match="has no CUDA.*--notorch"):
    torch_timing.device("gpu")


@pytest.mark.skipif(not torch_installed, reason="needs torch")
def test_twin_runs_wait_for_their_device_and_compilation_has_a_time_limit(monkeypatch):
  (net,) = suites.select(suites.build(["tiny"], suites.Settings(modes=())), ["tiny ResNet"])
  x = np.zeros((2, 32, 32, 3), np.float32)
  waits = []
  monkeypatch.setattr(torch_timing, "synchronize", waits.append)
  run, _ = torch_timing.inference(net, x)
  run(3)
  assert waits == ["cpu"]  # once per run(n), after its n batches (CUDA queues them)
  slow = torch_timing.Options(compile=("all",), compile_timeout=1e-3)
  with pytest.raises(torch_timing.CompileTimeout):
    torch_timing.compiled_inference(net, x, slow)
  eager = torch_timing.Options(compile=("all",), compile_backend="eager")
  run, logits, seconds = torch_timing.compiled_inference(net, x, eager)
  assert seconds > 0 and logits.shape == (2, 10)


def test_the_benchmark_imports_without_tensorflow(tmp_path):
  # The GPU machine has neither TensorFlow, tensorflow-datasets nor ml_collections.
  for name in ("tensorflow", "tensorflow_datasets", "ml_collections"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
  code = "import rmjax.commands.bench\nfrom rmjax.bench import layers, precision, report, training"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-3000:]


def test_precision_rows_name_each_precision():
  nets = suites.build(["tiny"], suites.Settings(image_size=16, modes=("dense",)))
  (row,) = precision.logit_differences(nets, batch=2, progress=lambda m: None)
  assert row["network"] == "tiny RMNet (dense)"
  assert set(row) >= {"max_abs_logit", "max_abs_logit_diff_default", "max_abs_logit_diff_highest"}
  assert bench_report.precision_table([row])[0].count("precision") == 2
