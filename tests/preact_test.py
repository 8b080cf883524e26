"""Pre-activation ResNets (He et al. 2016): exact RM with raw copies of each block's input, and
the CIFAR config trains and converts."""

import dataclasses
import functools
import math
import os
import sys

import chex
import jax
import jax.numpy as jnp
import pytest
from conversion_checks import assert_converts_exactly, logits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmjax import data, models, train, transforms
from rmjax.models import plain as plain_layers
from rmjax.models.conv import conv_impl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import preactresnet18_cifar10  # noqa: E402

# Small widths (the presets' depths); both stems; preactresnet50's first block has a projection
# right after the ImageNet stem's max-pool.
PRESETS = {
  "preactresnet18": (dict(stem="cifar", widths=(8, 8, 16, 16), stem_width=8), 16),
  "preactresnet34": (dict(stem="imagenet", widths=(8, 8, 16, 16), stem_width=8), 32),
  "preactresnet50": (dict(stem="imagenet", widths=(4, 4, 8, 8), stem_width=8), 32),
}


def preset(name):
  kwargs, size = PRESETS[name]
  model = models.create(name, num_classes=10, **kwargs)
  return model, jax.random.uniform(jax.random.key(1), (2, size, size, 3))


@pytest.mark.parametrize("keep_bn", [False, True], ids=["deploy", "keep_bn"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_convert_exactly(name, keep_bn):
  model, x = preset(name)
  # Structured execution in one form: its compilation is the slowest part of the check.
  assert_converts_exactly(
    model, x, keep_bn=keep_bn, blocks=sum(model.stage_sizes), structured=not keep_bn
  )


@st.composite
def small_preact_resnets(draw):
  stages = draw(st.integers(1, 3))
  block = draw(st.sampled_from([models.PreActBasicBlock, models.PreActBottleneck]))
  max_width = 12 if block is models.PreActBasicBlock else 6

  def per_stage(strategy):
    return tuple(draw(st.lists(strategy, min_size=stages, max_size=stages)))

  model = models.PreActResNet(
    stage_sizes=per_stage(st.integers(1, 2)),
    block=block,
    widths=per_stage(st.integers(2, max_width)),
    strides=per_stage(st.sampled_from([1, 2])),
    stem=draw(st.sampled_from(["cifar", "imagenet"])),
    stem_width=draw(st.integers(2, 16)),
    num_classes=draw(st.integers(2, 7)),
  )
  size = draw(st.integers(5, 20))
  options = {"keep_bn": draw(st.booleans()), "dense_reserve": draw(st.booleans())}
  return model, (draw(st.integers(1, 3)), size, size, 3), options, draw(st.integers(0, 2**16))


@settings(
  max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(small_preact_resnets())
def test_rm_convert_is_exact_for_random_preact_resnets(example):
  model, shape, options, seed = example
  x = jax.random.normal(jax.random.key(seed), shape)
  blocks = sum(model.stage_sizes)
  assert_converts_exactly(model, x, blocks=blocks, seed=seed, structured=False, **options)


def test_raw_copies_need_the_identity_activation():
  """The reserved copies are the un-normalised sums, negative in places: with a ReLU instead
  of the slope-1 PReLU (Sec. 4.1's second case) the plain network is wrong."""
  model, x = preset("preactresnet18")
  plain, plain_vars = assert_converts_exactly(model, x, keep_bn=False, blocks=8, structured=False)
  prelus = [i for i, layer in enumerate(plain.layers) if isinstance(layer, plain_layers.PReLU)]
  assert prelus  # the identity blocks' activations
  for i in prelus:
    slopes = plain_vars["params"][f"layers_{i}"]["slope"]
    half = plain.layers[i].features // 2
    assert set(map(float, slopes[:half])) == {0.0} and set(map(float, slopes[half:])) == {1.0}
  relus = tuple(
    plain_layers.ReLU() if isinstance(layer, plain_layers.PReLU) else layer
    for layer in plain.layers
  )
  params = {k: v for k, v in plain_vars["params"].items() if int(k.split("_")[1]) not in prelus}
  broken = dataclasses.replace(plain, layers=relus)
  diff = logits(broken.apply, {**plain_vars, "params": params}, x) - logits(
    plain.apply, plain_vars, x
  )
  assert float(jnp.abs(diff).max()) > 1e-2


def test_shortcut_bn_is_refused():
  with pytest.raises(ValueError, match="PreActBasicBlock has no shortcut_bn"):
    models.create("preactresnet18", shortcut_bn=True).layout()


def test_cifar_config_trains_and_converts(tmp_path):
  config = preactresnet18_cifar10.get_config()
  # The config's model and recipe on the embedded dataset, narrow and for two steps.
  config.dataset = "fashion_mnist_small"
  config.model_kwargs.widths = (4, 4, 8, 8)
  config.model_kwargs.stem_width = 4
  config.batch_size = 16
  config.num_train_steps = 2
  config.eval_every_epochs = 1000.0
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result.model == models.create(
    "preactresnet18", num_classes=10, stem="cifar", widths=(4, 4, 8, 8), stem_width=4
  )
  assert result.metrics["step"] == 2 and math.isfinite(result.metrics["eval_loss"])
  variables = {"params": result.state.params, "batch_stats": result.state.batch_stats}
  # The trained network converts exactly, on real test images.
  x = next(iter(data.eval_batches(config.dataset, batch_size=64)))["image"]
  plain, plain_vars = jax.jit(transforms.rm_convert, static_argnums=0)(result.model, variables)
  with conv_impl("lax"):
    want = logits(functools.partial(result.model.apply, train=False), variables, x)
    got = logits(plain.apply, plain_vars, x)
  chex.assert_trees_all_close(got, want, atol=1e-4 * max(1.0, float(jnp.abs(want).max())))
