"""The RM rules on single blocks built from raw arrays: reserve, reserve_grouped, merge."""

import chex
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized
from rules_helpers import apply_layer, batchnorm, conv, random_bn

from rmjax.transforms import fold_batchnorm, merge, reserve, reserve_grouped

EPS = 1e-5
relu = jax.nn.relu


def layer(kernel, bn, keep_bn):
  if keep_bn:
    return {"kernel": kernel, "bn": bn}
  k, b = fold_batchnorm(kernel, bn, epsilon=EPS)
  return {"kernel": k, "bias": b}


def random_basic_block(c_in, c_out, stride, zero_scales=0):
  ks = jax.random.split(jax.random.key(c_in * 100 + c_out + stride), 6)
  return {
    "w1": jax.random.normal(ks[0], (3, 3, c_in, c_out)) * 0.3,
    "bn1": random_bn(ks[1], c_out),
    "w2": jax.random.normal(ks[2], (3, 3, c_out, c_out)) * 0.3,
    "bn2": random_bn(ks[3], c_out, zero_scales=zero_scales),
    "wp": jax.random.normal(ks[4], (1, 1, c_in, c_out)) * 0.3,
    "bnp": random_bn(ks[5], c_out),
  }


def basic_block_reference(x, p, stride, projection):
  y = relu(batchnorm(conv(x, p["w1"], stride=stride), p["bn1"], EPS))
  y = batchnorm(conv(y, p["w2"]), p["bn2"], EPS)
  s = batchnorm(conv(x, p["wp"], stride=stride), p["bnp"], EPS) if projection else x
  return relu(y + s)


class BasicBlockRulesTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
    keep_bn=(False, True), shape=((6, 6, 1, False), (4, 8, 2, True), (5, 7, 1, True))
  )
  def test_reserve_then_merge_equals_the_block(self, keep_bn, shape):
    c_in, c_out, stride, projection = shape
    p = random_basic_block(c_in, c_out, stride, zero_scales=2)
    x = relu(jax.random.normal(jax.random.key(9), (2, 8, 8, c_in)))  # block inputs are >= 0

    def convert(p):
      if projection:
        sk, sb = fold_batchnorm(p["wp"], p["bnp"], epsilon=EPS)
      else:
        sk, sb = jnp.eye(c_in)[None, None], jnp.zeros((c_in,))
      c1 = reserve(layer(p["w1"], p["bn1"], keep_bn), epsilon=EPS)
      c2 = merge(layer(p["w2"], p["bn2"], keep_bn), sk, sb, epsilon=EPS)
      return c1, c2

    c1, c2 = self.variant(convert)(p)
    # Paper's counts: C -> 2C and 2C -> C 3x3 convs; A.1 (b): C x 3C and 3C x 2C (81 C^2).
    assert c1["kernel"].shape == (3, 3, c_in, c_out + c_in)
    assert c2["kernel"].shape == (3, 3, c_out + c_in, c_out)
    y = relu(apply_layer(relu(apply_layer(x, c1, stride=stride)), c2))
    chex.assert_trees_all_close(y, basic_block_reference(x, p, stride, projection), atol=1e-4)

  def test_reserve_keeps_negative_inputs_only_through_the_linear_part(self):
    # Documents the precondition: the reserved copy is exact before the ReLU for any sign.
    p = random_basic_block(3, 3, 1)
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 3))
    c1 = reserve(layer(p["w1"], p["bn1"], keep_bn=True), epsilon=EPS)
    chex.assert_trees_all_close(apply_layer(x, c1)[..., 3:], x, atol=1e-5)

  def test_merge_with_zero_bn_scale_stays_exact_in_fine_tuning_form(self):
    p = random_basic_block(4, 4, 1)
    p["bn2"]["scale"] = jnp.zeros(4)
    x = relu(jax.random.normal(jax.random.key(0), (1, 6, 6, 4)))
    c1 = reserve(layer(p["w1"], p["bn1"], True), epsilon=EPS)
    c2 = merge(layer(p["w2"], p["bn2"], True), jnp.eye(4)[None, None], jnp.zeros(4), epsilon=EPS)
    assert bool(jnp.all(jnp.isfinite(c2["kernel"])))
    y = relu(apply_layer(relu(apply_layer(x, c1)), c2))
    chex.assert_trees_all_close(y, basic_block_reference(x, p, 1, False), atol=1e-5)

  def test_inputs_are_not_modified(self):
    p = random_basic_block(4, 4, 1)
    before = jax.tree.map(jnp.array, p)
    ident = {"kernel": p["w1"], "bn": p["bn1"]}
    reserve(ident, epsilon=EPS)
    merge(ident, jnp.eye(4)[None, None], jnp.zeros(4), epsilon=EPS)
    chex.assert_trees_all_equal(p, before)
    assert set(ident) == {"kernel", "bn"}


def bottleneck_reference(x, p, stride, groups):
  y = relu(batchnorm(conv(x, p["w1"]), p["bn1"], EPS))
  y = relu(batchnorm(conv(y, p["w2"], stride=stride, groups=groups), p["bn2"], EPS))
  y = batchnorm(conv(y, p["w3"]), p["bn3"], EPS)
  return relu(y + batchnorm(conv(x, p["wp"], stride=stride), p["bnp"], EPS))


class BottleneckRulesTest(chex.TestCase):
  @parameterized.product(
    keep_bn=(False, True),
    dense=(False, True),
    # (C in, M mid, groups of the 3x3, expected groups after reserving in grouped form)
    dims=((8, 4, 1, 3), (8, 4, 2, 6), (6, 4, 1, 1), (4, 4, 4, 8)),
  )
  def test_three_conv_reserve_equals_the_block(self, keep_bn, dense, dims):
    c_in, mid, groups, grouped_groups = dims
    c_out, stride = 2 * c_in, 2
    ks = jax.random.split(jax.random.key(c_in + mid + groups), 8)
    p = {
      "w1": jax.random.normal(ks[0], (1, 1, c_in, mid)) * 0.4,
      "bn1": random_bn(ks[1], mid),
      "w2": jax.random.normal(ks[2], (3, 3, mid // groups, mid)) * 0.4,
      "bn2": random_bn(ks[3], mid),
      "w3": jax.random.normal(ks[4], (1, 1, mid, c_out)) * 0.4,
      "bn3": random_bn(ks[5], c_out, zero_scales=1),
      "wp": jax.random.normal(ks[6], (1, 1, c_in, c_out)) * 0.4,
      "bnp": random_bn(ks[7], c_out),
    }
    x = relu(jax.random.normal(jax.random.key(5), (2, 8, 8, c_in)))
    c1 = reserve(layer(p["w1"], p["bn1"], keep_bn), epsilon=EPS)
    c2, new_groups = reserve_grouped(
      layer(p["w2"], p["bn2"], keep_bn), groups, c_in, dense=dense, epsilon=EPS
    )
    sk, sb = fold_batchnorm(p["wp"], p["bnp"], epsilon=EPS)
    c3 = merge(layer(p["w3"], p["bn3"], keep_bn), sk, sb, epsilon=EPS)
    assert new_groups == (1 if dense else grouped_groups)
    assert c2["kernel"].shape[-1] == mid + c_in
    y = relu(apply_layer(x, c1, padding=0))
    y = relu(apply_layer(y, c2, stride=stride, groups=new_groups))
    y = relu(apply_layer(y, c3, padding=0))
    chex.assert_trees_all_close(y, bottleneck_reference(x, p, stride, groups), atol=1e-4)

  def test_grouped_form_adds_only_dirac_groups(self):
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 16, 16))
    grouped, groups = reserve_grouped({"kernel": kernel, "bias": jnp.zeros(16)}, 1, 64)
    dense, _ = reserve_grouped({"kernel": kernel, "bias": jnp.zeros(16)}, 1, 64, dense=True)
    assert groups == 5
    assert grouped["kernel"].size == 9 * 16 * (16 + 64)
    assert dense["kernel"].size == 9 * (16 + 64) ** 2
    chex.assert_trees_all_equal(grouped["kernel"][..., :16], kernel)


def test_merge_rejects_a_shortcut_kernel_larger_than_the_conv():
  with pytest.raises(ValueError, match="cannot pad"):
    merge({"kernel": jnp.zeros((1, 1, 2, 2)), "bias": jnp.zeros(2)}, jnp.zeros((3, 3, 2, 2)), 0)


@pytest.mark.parametrize("keep_bn", [False, True])
def test_reserve_some_channels_copies_the_leading_ones(keep_bn):
  ks = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(ks[0], (2, 6, 6, 5))  # may be negative: nothing here applies a ReLU
  base = layer(jax.random.normal(ks[1], (1, 1, 5, 4)), random_bn(ks[2], 4), keep_bn)
  reserved = reserve(base, channels=2, epsilon=EPS)
  y = apply_layer(x, reserved)
  assert y.shape == (2, 6, 6, 6)
  chex.assert_trees_all_close(y[..., :4], apply_layer(x, base), atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(y[..., 4:], x[..., :2], atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="cannot reserve 6 of a conv's 5 input channels"):
    reserve(base, channels=6)


@pytest.mark.parametrize("keep_bn", [False, True])
def test_reserve_grouped_carries_through_a_conv_that_changes_width(keep_bn):
  # A 1x1 conv 4 -> 6 carrying 4 channels: Dirac groups of 4 would not fit its 6 outputs, so
  # the copies ride in the dense (block-diagonal) form.
  ks = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(ks[0], (2, 5, 5, 8))  # 4 inputs of the conv, then 4 carried channels
  base = layer(jax.random.normal(ks[1], (1, 1, 4, 6)), random_bn(ks[2], 6), keep_bn)
  carried, groups = reserve_grouped(base, 1, 4, epsilon=EPS)
  assert groups == 1 and carried["kernel"].shape == (1, 1, 8, 10)
  y = apply_layer(x, carried, padding=0)
  chex.assert_trees_all_close(y[..., :6], apply_layer(x[..., :4], base, padding=0), atol=1e-5)
  chex.assert_trees_all_close(y[..., 6:], x[..., 4:], atol=1e-5)
