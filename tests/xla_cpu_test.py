"""rmjax's default XLA:CPU flags: added on import, never over a user's own, off on request."""

import os
import subprocess
import sys

from rmjax import xla_cpu
from rmjax.models import conv

YNN = "--xla_cpu_experimental_ynn_fusion_type"


def test_with_defaults_adds_only_flags_not_named():
  assert xla_cpu.with_defaults("") == f"{YNN}=dot,reduce"
  mine = "--xla_force_host_platform_device_count=8"
  assert xla_cpu.with_defaults(mine) == f"{mine} {YNN}=dot,reduce"
  assert xla_cpu.with_defaults(f"{YNN}=dot {mine}") == f"{YNN}=dot {mine}"


def test_apply_defaults_respects_the_switch_and_a_started_backend(monkeypatch):
  environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
  monkeypatch.setattr(xla_cpu, "backends_started", lambda: False)
  monkeypatch.setattr(xla_cpu, "jaxlib_tested", lambda: True)
  assert xla_cpu.apply_defaults(environ)
  assert environ["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {YNN}=dot,reduce"

  off = {xla_cpu.ENV_SWITCH: "0"}
  assert not xla_cpu.apply_defaults(off)
  assert "XLA_FLAGS" not in off

  monkeypatch.setattr(xla_cpu, "jaxlib_tested", lambda: False)
  untested = {}
  assert not xla_cpu.apply_defaults(untested)
  assert "XLA_FLAGS" not in untested

  monkeypatch.setattr(xla_cpu, "jaxlib_tested", lambda: True)
  monkeypatch.setattr(xla_cpu, "backends_started", lambda: True)
  late = {}
  assert not xla_cpu.apply_defaults(late)
  assert "XLA_FLAGS" not in late


def test_only_jaxlib_releases_the_flags_were_checked_on():
  # XLA aborts on an unknown flag: a release without it must not get it.
  assert xla_cpu.jaxlib_tested("0.10.2")
  assert not xla_cpu.jaxlib_tested("0.9.1")
  assert not xla_cpu.jaxlib_tested("1.0")
  assert not xla_cpu.jaxlib_tested("dev")
  assert xla_cpu.jaxlib_tested()  # this environment's jaxlib is one of them


def _import_rmjax(env_overrides, prelude=""):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.ENV_SWITCH)}
  env.update(env_overrides)
  code = (
    f"{prelude}import os, rmjax\n"
    "from rmjax.models.conv import ynn_dots\n"
    "print(repr(os.environ.get('XLA_FLAGS', '')), ynn_dots())"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
  )
  return out.stdout.strip().rsplit("\n", 1)[-1]


def test_import_sets_the_flag_that_the_conv_table_reads():
  # The dispatch table (conv.choose) must see the setting XLA actually runs with.
  assert _import_rmjax({}) == f"'{YNN}=dot,reduce' True"
  assert _import_rmjax({"XLA_FLAGS": f"{YNN}=dot"}) == f"'{YNN}=dot' True"
  assert _import_rmjax({xla_cpu.ENV_SWITCH: "0"}) == "'' False"
  started = "import jax; jax.numpy.zeros(1).block_until_ready()\n"
  assert _import_rmjax({}, prelude=started) == "'' False"


def test_ynn_flag_parsing():
  assert conv._ynn_dots(f"{YNN}=dot,reduce")
  assert conv._ynn_dots(f"--xla_force_host_platform_device_count=2 {YNN}=reduce,dot")
  assert not conv._ynn_dots(f"{YNN}=reduce")
  assert not conv._ynn_dots("")
