"""Slimming a ResNet with its residual connections (the baseline of Sec. 5.1): block-inner
channels only, exact where the removed channels are zero, and the same network as pruning its
RM form with `prune(..., inner_only=True)`."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import models, transforms
from rmjax.testing import eval_logits, random_variables

NETWORKS = {
  "basic": ("resnet20", dict(stage_sizes=(1, 1, 1), widths=(8, 16, 16), stem_width=8)),
  "bottleneck": (
    "resnet50",
    dict(stage_sizes=(1, 2), widths=(4, 8), strides=(1, 2), stem_width=8),
  ),
}


@functools.cache
def network(name: str, shortcut_bn: bool = True):
  """`(model, variables, x)`: a small ResNet with random BN (scales of both signs)."""
  factory, kwargs = NETWORKS[name]
  model = models.create(factory, num_classes=10, stem="cifar", shortcut_bn=shortcut_bn, **kwargs)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), jnp.float32)
  return model, random_variables(model, x, seed=5), x


def zero_inner(variables, zeros, bias=0.0):
  """BN scale 0 and bias `bias` for `{(block, bn): [channels]}`: those channels are constant
  after the ReLU (0 for bias <= 0), so removing them must not change the logits (a non-zero
  constant folded into the next BN; exact where that conv is 1x1)."""
  params = jax.tree.map(np.array, variables["params"])
  for (block, bn), channels in zeros.items():
    params[block][bn]["scale"][channels] = 0.0
    params[block][bn]["bias"][channels] = bias
  return {**variables, "params": params}


@pytest.mark.parametrize("name", NETWORKS)
def test_threshold_zero_changes_nothing(name):
  model, variables, x = network(name)
  slim, slim_vars, report = transforms.prune_resnet(model, variables, 0.0)
  blocks = [b for b in model.layout() if isinstance(b, models.ResidualBlock)]
  assert slim.inner_widths == tuple((b.features,) * b.num_inner for b in blocks)
  chex.assert_trees_all_equal(slim_vars, variables)
  assert report["params_after"] == report["params_before"]
  chex.assert_trees_all_close(
    eval_logits(slim, slim_vars, x), eval_logits(model, variables, x), atol=0, rtol=0
  )


@pytest.mark.parametrize(
  "name, zeros, widths",
  [
    (
      "basic",
      {("layer1_0", "bn1"): [0, 3], ("layer3_0", "bn1"): [1, 2, 15]},
      ((6,), (16,), (13,)),
    ),
    (
      "bottleneck",
      {("layer1_0", "bn1"): [1], ("layer1_0", "bn2"): [0, 2], ("layer2_1", "bn2"): [7]},
      ((3, 2), (8, 8), (8, 7)),
    ),
  ],
)
def test_zeroed_inner_channels_are_removed_exactly(name, zeros, widths):
  model, variables, x = network(name)
  zeroed = zero_inner(variables, zeros)
  slim, slim_vars, report = transforms.prune_resnet(model, zeroed, threshold=1e-6)
  assert slim.inner_widths == widths
  got = {(e["block"], "bn" + e["conv"][-1]): e["removed"] for e in report["blocks"]}
  assert {k: v for k, v in got.items() if v} == zeros
  want = eval_logits(model, zeroed, x)
  chex.assert_trees_all_close(eval_logits(slim, slim_vars, x), want, atol=1e-5, rtol=0)
  assert float(jnp.abs(want).max()) > 0.1
  # The variables fit the slimmed architecture exactly (check_variables raises otherwise).
  transforms.check_variables(slim, slim_vars)
  assert report["params_after"] < report["params_before"]


def unstructured(layers):
  return [layer.unstructured() if hasattr(layer, "unstructured") else layer for layer in layers]


@pytest.mark.parametrize("name", NETWORKS)
def test_rm_form_of_the_slimmed_resnet_is_inner_only_pruning(name):
  """Both roads to the baseline meet: RM(prune_resnet(net)) == prune(RM(net), inner_only)."""
  model, variables, x = network(name)
  threshold = 0.7  # random |scales| lie in [0.3, 1.2]: about a third of each layer goes
  slim, slim_vars, report = transforms.prune_resnet(model, variables, threshold)
  assert 0.2 < 1 - report["params_after"] / report["params_before"] < 0.9
  # A bottleneck's 3x3 conv carries the reserved channels densely: prune skips convs that
  # feed grouped ones, and the ResNet's conv1 feeds a dense conv2.
  convert = functools.partial(transforms.rm_convert, keep_bn=True, dense_reserve=True)
  plain, plain_vars = convert(model, variables)
  want, want_vars, _ = transforms.prune(plain, plain_vars, threshold, inner_only=True)
  got, got_vars = convert(slim, slim_vars)
  # The same layers; `prune` does not keep the record of Dirac rows (structured execution).
  assert unstructured(got.layers) == unstructured(want.layers)
  chex.assert_trees_all_close(got_vars, want_vars, atol=1e-6, rtol=1e-6)
  chex.assert_trees_all_close(
    eval_logits(got, got_vars, x), eval_logits(slim, slim_vars, x), atol=1e-5, rtol=0
  )


def test_a_flat_channel_before_a_1x1_conv_is_folded_exactly():
  model, variables, x = network("bottleneck")
  flat = zero_inner(variables, {("layer2_0", "bn2"): [1, 5], ("layer2_1", "bn2"): [0]}, bias=0.6)
  want = eval_logits(model, flat, x)
  slim, slim_vars, report = transforms.prune_resnet(model, flat, threshold=1e-6)
  assert slim.inner_widths == ((4, 4), (8, 6), (8, 7))
  assert sum(e["folded"] for e in report["blocks"]) == 3
  chex.assert_trees_all_close(eval_logits(slim, slim_vars, x), want, atol=1e-5, rtol=0)
  vanilla, vanilla_vars, _ = transforms.prune_resnet(model, flat, 1e-6, fold_constants=False)
  assert float(jnp.abs(eval_logits(vanilla, vanilla_vars, x) - want).max()) > 1e-3


def test_a_conv_never_loses_every_channel():
  model, variables, x = network("bottleneck")
  slim, slim_vars, _ = transforms.prune_resnet(model, variables, threshold=1e9)
  assert slim.inner_widths == ((1, 1),) * 3
  # The survivor is the channel with the largest |scale|.
  scale = np.abs(np.asarray(variables["params"]["layer1_0"]["bn1"]["scale"]))
  kept = slim_vars["params"]["layer1_0"]["bn1"]["scale"]
  assert float(jnp.abs(kept[0])) == scale.max()
  assert np.isfinite(np.asarray(eval_logits(slim, slim_vars, x))).all()


def test_errors():
  model, variables, _ = network("basic")
  with pytest.raises(ValueError, match=">= 0"):
    transforms.prune_resnet(model, variables, threshold=-1.0)
  with pytest.raises(ValueError, match="not MobileNetV2.*use prune"):
    mobile = models.create("mobilenetv2", width=0.25, num_classes=10)
    transforms.prune_resnet(mobile, {}, 1e-3)
  params = {**variables["params"], "layer2_0": {}}
  with pytest.raises(ValueError, match="layer2_0"):
    transforms.prune_resnet(model, {**variables, "params": params}, 1e-3)
  with pytest.raises(ValueError, match="inner_widths has 2 entries for 3 blocks"):
    model.clone(inner_widths=((8,), (8,))).layout()
  with pytest.raises(ValueError, match="Bottleneck has 2 inner conv"):
    models.Bottleneck(8, 4, inner_features=(4,)).__post_init__()
