"""fold_batchnorm and identity_batchnorm (Eq. 3)."""

import chex
import jax
import jax.numpy as jnp
from absl.testing import parameterized
from rules_helpers import batchnorm, conv, random_bn

from rmjax.transforms import fold_batchnorm, identity_batchnorm

EPS = 1e-5


class BatchNormTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1, 1, 8), (3, 1, 8), (3, 4, 8))
  def test_fold_equals_conv_then_bn(self, k, groups, cout):
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (2, 7, 7, 8))
    kernel = jax.random.normal(keys[1], (k, k, 8 // groups, cout))
    bn = random_bn(keys[2], cout)
    bias = jax.random.normal(keys[3], (cout,))
    fold = self.variant(lambda kernel, bn, bias: fold_batchnorm(kernel, bn, epsilon=EPS, bias=bias))
    fk, fb = fold(kernel, bn, bias)
    want = batchnorm(conv(x, kernel, groups=groups, bias=bias), bn, EPS)
    chex.assert_trees_all_close(conv(x, fk, groups=groups, bias=fb), want, atol=1e-5, rtol=1e-5)

  def test_fold_without_conv_bias(self):
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 5))
    bn = random_bn(jax.random.key(1), 5)
    _, bias = fold_batchnorm(kernel, bn, epsilon=EPS)
    chex.assert_trees_all_close(
      bias, bn["bias"] - bn["mean"] * bn["scale"] / jnp.sqrt(bn["var"] + EPS), atol=1e-6
    )

  def test_identity_batchnorm_returns_its_input(self):
    bn = random_bn(jax.random.key(0), 6)
    ident = identity_batchnorm(bn["mean"], bn["var"], epsilon=EPS)
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 6)) * 5
    chex.assert_trees_all_close(batchnorm(x, ident, EPS), x, atol=1e-5)
    chex.assert_trees_all_equal(ident["mean"], bn["mean"])
    chex.assert_trees_all_equal(ident["var"], bn["var"])
