"""The command-line tools as installed: each `rmjax-NAME` console script runs, and its `--help`
lists the command's own flags (they live in rmjax/commands/, not in the main module absl reads)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One flag each command defines itself, and its one-line summary's first words.
COMMANDS = {
  "train": ("--config_help", "Train a model"),
  "convert": ("--overwrite", "Convert a training checkpoint"),
  "evaluate": ("--dataset", "Top-1/top-5 of training checkpoints"),
  "bench": ("--batch_sizes", "Inference speed, params"),
  "prune": ("--threshold", "Prune a plain network"),
  "slim": ("--config", "Prune through RM vs prune a ResNet"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_console_script_help_lists_the_commands_flags(name):
  script = os.path.join(os.path.dirname(sys.executable), f"rmjax-{name}")
  if not os.path.exists(script):
    pytest.skip(f"rmjax is not installed in {sys.prefix} (pip install -e .)")
  result = subprocess.run([script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert "Traceback" not in result.stderr, result.stderr[-2000:]  # (absl's --help exits 1)
  flag, summary = COMMANDS[name]
  assert result.stdout.startswith(summary), result.stdout[:300]
  assert f"  {flag}" in result.stdout or f"  --[no]{flag[2:]}" in result.stdout, result.stdout
