"""rmjax: train residual networks in JAX/Flax, then remove their residual connections exactly.

>>> from rmjax import models, transforms
>>> plain, variables = rmjax.load_plain("PLAIN")   # a directory written by convert.py
"""

from rmjax import models, transforms
from rmjax.plain_io import load_plain, save_plain

__version__ = "0.1.0"
__all__ = ["load_plain", "models", "save_plain", "transforms"]
