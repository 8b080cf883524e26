"""rmjax: train residual networks in JAX/Flax, then remove their residual connections exactly.

>>> from rmjax import models, transforms
"""

from rmjax import models, transforms

__version__ = "0.1.0"
__all__ = ["models", "transforms"]
