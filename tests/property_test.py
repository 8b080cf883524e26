"""Property: for any small ResNet (random widths, depths, strides, stems, batch), RM is exact."""

import chex
import jax
import jax.numpy as jnp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmjax import models, transforms
from rmjax.cost import count_residual_adds
from rmjax.testing import eval_logits, random_variables


@st.composite
def small_resnets(draw):
  stages = draw(st.integers(1, 3))
  block = draw(st.sampled_from([models.BasicBlock, models.Bottleneck]))
  max_width = 12 if block is models.BasicBlock else 6
  model = models.ResNet(
    stage_sizes=tuple(draw(st.lists(st.integers(1, 2), min_size=stages, max_size=stages))),
    block=block,
    widths=tuple(draw(st.lists(st.integers(2, max_width), min_size=stages, max_size=stages))),
    strides=tuple(draw(st.lists(st.sampled_from([1, 2]), min_size=stages, max_size=stages))),
    stem=draw(st.sampled_from(["cifar", "imagenet"])),
    stem_width=draw(st.integers(2, 16)),
    num_classes=draw(st.integers(2, 7)),
  )
  batch = draw(st.integers(1, 3))
  size = draw(st.integers(5, 20))
  channels = draw(st.sampled_from([1, 3]))
  options = {"keep_bn": draw(st.booleans()), "dense_reserve": draw(st.booleans())}
  return model, (batch, size, size, channels), options, draw(st.integers(0, 2**16))


@settings(
  # 15 random networks: each compiles four programs; the exactness tests of the presets cover
  # the named architectures, this one the odd corners (widths 2, size-5 inputs, strides).
  max_examples=15,
  deadline=None,
  suppress_health_check=[HealthCheck.too_slow],
  database=None,
)
@given(small_resnets())
def test_rm_convert_is_exact_for_random_resnets(example):
  model, shape, options, seed = example
  x = jax.random.normal(jax.random.key(seed), shape)  # signed: only block inputs must be >= 0
  variables = random_variables(model, x, seed, zero_scale_fraction=0.1)
  convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames=tuple(options))
  plain, plain_vars = convert(model, variables, **options)
  want = eval_logits(model, variables, x)
  got = eval_logits(plain, plain_vars, x)
  chex.assert_trees_all_close(got, want, atol=1e-4, rtol=0)
  assert count_residual_adds(lambda x: plain.apply(plain_vars, x, structured=False), x) == 0
  n_blocks = sum(model.stage_sizes)
  assert count_residual_adds(lambda x: model.apply(variables, x, train=False), x) == n_blocks
  assert jnp.all(jnp.isfinite(got))
