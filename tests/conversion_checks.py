"""The checks every converted block family passes: exact logits in both forms, no residual
addition left, structured execution equal to dense, the Dirac record intact."""

import functools

import chex
import jax
import jax.numpy as jnp

from rmjax import transforms
from rmjax.cost import count_residual_adds
from rmjax.models.conv import conv_impl
from rmjax.models.structured import check_structure
from rmjax.testing import random_variables

_convert = jax.jit(
  transforms.rm_convert, static_argnums=0, static_argnames=("keep_bn", "dense_reserve")
)


def logits(apply, variables, x):
  with jax.default_matmul_precision("highest"):
    return jax.jit(apply)(variables, x)


def assert_converts_exactly(
  model, x, *, keep_bn: bool, blocks: int, seed: int = 2, structured: bool = True, **options
):
  """Converts `model` (random variables, non-trivial BN, a few zero BN scales) and checks the
  plain network: max |diff| <= 1e-4 * max(1, max |logit|), `blocks` residual additions before
  and none after, and (with `structured`) structured execution equal to dense. Returns the
  plain network and its variables."""
  variables = random_variables(model, x, seed, zero_scale_fraction=0.05)
  plain, plain_vars = _convert(model, variables, keep_bn=keep_bn, **options)
  # XLA's convolutions: exactness does not depend on the conv formulation (conv_test checks
  # each against XLA's), and at these tiny shapes the CPU formulations' compile time dominates.
  with conv_impl("lax"):
    want = logits(functools.partial(model.apply, train=False), variables, x)
    got = logits(plain.apply, plain_vars, x)
    scale = max(1.0, float(jnp.abs(want).max()))
    chex.assert_trees_all_close(got, want, atol=1e-4 * scale, rtol=0)
    assert 0.1 < float(jnp.abs(want).max())  # the check means something
    if structured:
      assert check_structure(plain, plain_vars) == []
      fast = logits(functools.partial(plain.apply, structured=True), plain_vars, x)
      chex.assert_trees_all_close(fast, got, atol=1e-5 * scale, rtol=0)
  assert count_residual_adds(lambda x: model.apply(variables, x, train=False), x) == blocks
  # Dense execution: structured execution's identity adds are the Dirac copies, not shortcuts.
  assert count_residual_adds(lambda x: plain.apply(plain_vars, x, structured=False), x) == 0
  return plain, plain_vars
