"""dirac_kernel (Eq. 2), pad_kernel and grouped_to_dense."""

import chex
import jax
import pytest
from absl.testing import parameterized
from rules_helpers import conv

from rmjax.transforms import dirac_kernel, grouped_to_dense, pad_kernel


class DiracTest(chex.TestCase):
  @parameterized.parameters((1, 1), (3, 1), (3, 2), (5, 1), (7, 2))
  def test_dirac_conv_is_strided_identity(self, k, stride):
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 6))
    y = conv(x, dirac_kernel(6, k), stride=stride)
    # The sampling of a strided 1x1 conv: the input at (stride*i, stride*j).
    chex.assert_trees_all_close(y, x[:, ::stride, ::stride], atol=0)

  def test_grouped_dirac(self):
    kernel = dirac_kernel(8, 3, groups=4)
    assert kernel.shape == (3, 3, 2, 8)
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 8))
    chex.assert_trees_all_close(conv(x, kernel, groups=4), x, atol=0)

  @parameterized.parameters((768, 1), (1024, 2))
  def test_large_dirac_under_jit_is_the_same_kernel(self, channels, groups):
    # Above 2**21 elements jit builds it from iotas rather than embedding a constant.
    eager = dirac_kernel(channels, 3, groups=groups)
    assert eager.size > 2**21
    chex.assert_trees_all_equal(jax.jit(lambda: dirac_kernel(channels, 3, groups=groups))(), eager)

  def test_dirac_rejects_bad_groups(self):
    with pytest.raises(ValueError, match="divisible by groups"):
      dirac_kernel(6, 3, groups=4)

  @parameterized.parameters((1, 3), (1, 5), (3, 5), (3, 3))
  def test_pad_kernel_preserves_the_conv(self, k, size):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    kernel = jax.random.normal(jax.random.key(1), (k, k, 3, 4))
    padded = pad_kernel(kernel, size)
    assert padded.shape == (size, size, 3, 4)
    for stride in (1, 2):
      chex.assert_trees_all_close(
        conv(x, padded, stride=stride), conv(x, kernel, stride=stride), atol=1e-5
      )

  def test_pad_kernel_rejects_shrinking(self):
    with pytest.raises(ValueError, match="cannot pad a 3x3 kernel to 1x1"):
      pad_kernel(dirac_kernel(2, 3), 1)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1,), (2,), (4,), (8,))
  def test_grouped_to_dense(self, groups):
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 8 // groups, 16))
    dense = self.variant(grouped_to_dense, static_argnums=1)(kernel, groups)
    assert dense.shape == (3, 3, 8, 16)
    chex.assert_trees_all_close(conv(x, dense), conv(x, kernel, groups=groups), atol=1e-5)
