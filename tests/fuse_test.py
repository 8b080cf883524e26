"""fuse_pointwise (Eq. 5): two consecutive 1x1 convs equal one."""

import chex
import jax
import pytest
from absl.testing import parameterized
from rules_helpers import conv

from rmjax.transforms import fuse_pointwise


class FusePointwiseTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1,), (2,))
  def test_fused_layer_equals_the_two_layers(self, stride):
    ks = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(ks[0], (2, 6, 6, 5))
    first = {
      "kernel": jax.random.normal(ks[1], (1, 1, 5, 7)),
      "bias": jax.random.normal(ks[2], (7,)),
    }
    second = {
      "kernel": jax.random.normal(ks[3], (1, 1, 7, 3)),
      "bias": jax.random.normal(ks[4], (3,)),
    }
    fused = self.variant(fuse_pointwise)(first, second)
    assert fused["kernel"].shape == (1, 1, 5, 3)
    want = conv(
      conv(x, first["kernel"], stride=stride, bias=first["bias"]),
      second["kernel"],
      bias=second["bias"],
    )
    got = conv(x, fused["kernel"], stride=stride, bias=fused["bias"])
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-5)


def test_rejects_non_pointwise_and_mismatched_widths():
  k = jax.numpy.zeros
  with pytest.raises(ValueError, match=r"two 1x1 kernels, got \(3, 3\)"):
    fuse_pointwise(
      {"kernel": k((3, 3, 2, 2)), "bias": k(2)}, {"kernel": k((1, 1, 2, 2)), "bias": k(2)}
    )
  with pytest.raises(ValueError, match="has 4 outputs but the second takes 3 inputs"):
    fuse_pointwise(
      {"kernel": k((1, 1, 2, 4)), "bias": k(4)}, {"kernel": k((1, 1, 3, 2)), "bias": k(2)}
    )
