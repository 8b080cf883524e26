"""XLA:CPU settings rmjax runs with by default, set in XLA_FLAGS when `rmjax` is imported.

XLA reads XLA_FLAGS once, when JAX first starts a backend, so `import rmjax` adds these only if
no backend is running yet and only for flags the environment does not already name: a user's
own XLA_FLAGS always win, and `RMJAX_XLA_CPU_DEFAULTS=0` turns the defaults off.

`--xla_cpu_experimental_ynn_fusion_type=dot,reduce` hands XLA:CPU's convolutions, dots and
reductions to YNNPACK. Measured on a 2-core Xeon (AVX-512), batch 128, against jax 0.10's
default (docs/conv_speed.md has the tables): a dense 3x3 conv 8x8x192 forward 42 -> 27 ms;
training steps ResNet-18 25 -> 38 imgs/s, MobileNetV2 82 -> 110; inference ResNet-18 87 -> 125.
Both members matter: "dot" alone makes reductions (BN statistics) 5-9x slower than the default,
and adding "eltwise" moves elementwise ops out of XLA's loop fusions (MobileNetV2's training
step 110 -> 65). The flag is ignored by GPU and TPU backends.

XLA aborts the process on a flag it does not know, and experimental flags come and go, so the
defaults are only added for jaxlib releases they were checked on (TESTED_JAXLIB).
"""

from __future__ import annotations

import os
import sys

ENV_SWITCH = "RMJAX_XLA_CPU_DEFAULTS"
YNN_FUSION_TYPE = "--xla_cpu_experimental_ynn_fusion_type"
DEFAULT_FLAGS = (f"{YNN_FUSION_TYPE}=dot,reduce",)
# (major, minor) releases of jaxlib whose XLA has every flag of DEFAULT_FLAGS.
TESTED_JAXLIB = frozenset({(0, 10)})


def jaxlib_tested(version: str | None = None) -> bool:
  """Whether `version` (default: the installed jaxlib) is a release in TESTED_JAXLIB."""
  if version is None:
    from importlib import metadata

    try:
      version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
      return False
  try:
    major, minor = (int(part) for part in version.split(".")[:2])
  except ValueError:
    return False
  return (major, minor) in TESTED_JAXLIB


def flag_value(xla_flags: str, name: str) -> str | None:
  """The value `xla_flags` (an XLA_FLAGS string) gives flag `name` ("--xla_..."): its first
  mention, "" for a bare flag, None where it does not name it."""
  for flag in xla_flags.split():
    flag_name, _, value = flag.partition("=")
    if flag_name == name:
      return value
  return None


def with_defaults(xla_flags: str, defaults: tuple[str, ...] = DEFAULT_FLAGS) -> str:
  """`xla_flags` plus each default whose flag name it does not already set."""
  extra = [flag for flag in defaults if flag_value(xla_flags, flag.partition("=")[0]) is None]
  return " ".join([xla_flags.strip(), *extra]).strip()


def backends_started() -> bool:
  """Whether JAX has started a backend (XLA_FLAGS is read then, and never again)."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  if bridge is None:
    return False
  started = getattr(bridge, "backends_are_initialized", None)
  return True if started is None else bool(started())  # unknown JAX internals: assume so


def apply_defaults(environ=os.environ) -> bool:
  """Adds DEFAULT_FLAGS to `environ["XLA_FLAGS"]` unless switched off, too late, or on a jaxlib
  they were not checked on; whether it did."""
  if environ.get(ENV_SWITCH, "1") == "0" or not jaxlib_tested() or backends_started():
    return False
  environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""))
  return True
