"""fuse_pointwise (Eq. 5): two consecutive 1x1 convs equal one."""

import chex
import jax
import pytest
from absl.testing import parameterized
from rules_helpers import apply_layer, conv, random_bn

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


@pytest.mark.parametrize("first_bn, second_bn", [(True, False), (False, True), (True, True)])
def test_fine_tuning_form_fuses_and_keeps_the_second_bn(first_bn, second_bn):
  ks = jax.random.split(jax.random.key(1), 6)
  x = jax.random.normal(ks[0], (2, 5, 5, 4))
  w1, w2 = jax.random.normal(ks[1], (1, 1, 4, 6)), jax.random.normal(ks[2], (1, 1, 6, 3))
  bn1, bn2 = random_bn(ks[3], 6, zero_scales=1), random_bn(ks[4], 3)
  first = {"kernel": w1, "bn": bn1} if first_bn else {"kernel": w1, "bias": bn1["bias"]}
  second = {"kernel": w2, "bn": bn2} if second_bn else {"kernel": w2, "bias": bn2["bias"]}
  fused = fuse_pointwise(first, second, epsilon=1e-5)
  assert ("bn" in fused) == second_bn
  want = apply_layer(apply_layer(x, first), second)
  chex.assert_trees_all_close(apply_layer(x, fused), want, atol=1e-4, rtol=1e-5)
