"""What tests import (nothing outside tests/ imports this module): random non-trivial variables
to check conversions with, and jitted float32 logits at full precision.

  >>> variables = random_variables(model, x, seed=1)     # BN statistics that are not identities
  >>> got, want = eval_logits(plain, plain_vars, x), eval_logits(model, variables, x)
"""

from rmjax.randomize import random_variables, randomize_batchnorm
from rmjax.verify import eval_logits, max_abs_difference

__all__ = ["eval_logits", "max_abs_difference", "random_variables", "randomize_batchnorm"]
