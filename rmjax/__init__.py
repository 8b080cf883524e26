"""rmjax: train residual networks in JAX/Flax, then remove their residual connections exactly.

  >>> import rmjax
  >>> plain, variables = rmjax.load_plain("PLAIN")   # a directory written by convert.py

Importing rmjax sets XLA:CPU's fast convolution flags (rmjax.xla_cpu) if JAX has not started
yet; RMJAX_XLA_CPU_DEFAULTS=0 leaves XLA_FLAGS alone.
"""

import os

from rmjax import xla_cpu

# rmjax uses TensorFlow only for tf.data. Its oneDNN kernels are never used then, and its C++
# start-up lines on stderr bury the one-line errors of the command-line tools. A user's own
# setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
xla_cpu.apply_defaults()

from rmjax import models, transforms  # noqa: E402
from rmjax.plain_io import load_plain, save_plain  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load_plain", "models", "save_plain", "transforms"]
