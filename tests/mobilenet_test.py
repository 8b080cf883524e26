"""MobileNetV2 -> RMNetV1 -> MobileNetV1 (Sec. 4.4, Fig. 6, Eq. 5, Table 2)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import transforms
from rmjax.compare import conversion_sizes

# One XLA program per conversion: eager conversion compiles op by op (4x slower here).
from rmjax.cost import count_residual_adds
from rmjax.models import mobilenet
from rmjax.models import plain as plain_layers

# One XLA program per conversion: eager conversion compiles op by op (4x slower here).
from rmjax.testing import eval_logits, random_variables

# One XLA program per conversion: eager conversion compiles op by op (4x slower here).
convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames=("keep_bn", "fuse"))


def abstract_variables(model, size=32):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def converted_layers(model, **kwargs):
  plain, _ = jax.eval_shape(
    lambda v: transforms.rm_convert(model, v, **kwargs), abstract_variables(model)
  )
  return plain.layers


def is_activation(layer):
  return isinstance(layer, plain_layers.ReLU | plain_layers.PReLU)


# --- the architectures against their papers ------------------------------------------------


def test_parameter_counts_and_flops_match_the_original_papers():
  # torchvision / Keras counts (1000 classes); Mult-Adds of Sandler et al. (300M) and
  # Howard et al. (569M) at 224x224.
  (v2_params, v2_macs), _ = conversion_sizes(mobilenet.mobilenetv2(), 224, fuse=False)
  assert v2_params == 3_504_872
  assert round(v2_macs / 1e6) == 301
  (v1_params, v1_macs), _ = conversion_sizes(mobilenet.MobileNetV1(), 224)
  assert v1_params == 4_231_976
  assert round(v1_macs / 1e6) == 569


@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.25])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("keep_bn", [False, True], ids=["deploy", "keep_bn"])
def test_converted_network_has_mobilenetv1_layers(width, stem, keep_bn):
  """RM + fuse of the re-designed MobileNetV2 gives MobileNetV1's exact layer sequence."""
  v2 = mobilenet.mobilenetv2_to_v1(width=width, stem=stem, num_classes=10)
  v1 = mobilenet.MobileNetV1(width=width, stem=stem, num_classes=10)
  got, want = converted_layers(v2, keep_bn=keep_bn), converted_layers(v1, keep_bn=keep_bn)
  assert len(got) == len(want)
  for a, b in zip(got, want, strict=True):
    # Activations differ in kind only: PReLU where channels are carried, ReLU elsewhere; BNs
    # and depthwise convs also record how many of their channels are carried.
    if isinstance(a, plain_layers.BatchNorm):
      a = dataclasses.replace(a, reserved=0)
    if isinstance(a, plain_layers.Conv):
      a = a.unstructured()
    assert a == b or (is_activation(a) and is_activation(b)), (a, b)
  convs = [layer for layer in got if isinstance(layer, plain_layers.Conv)]
  assert len(convs) == 27  # Howard et al.: stem + 13 x (depthwise, pointwise)


def test_table_2_flops():
  # CIFAR-10, 32x32. The paper: 83.4M -> 47.1M, and 47.1M for MobileNetV1 (docs/mobilenet.md
  # explains the small difference in counting).
  model = mobilenet.mobilenetv2_to_v1(num_classes=10, stem="cifar")
  (_, before), (plain_params, after) = conversion_sizes(model, 32)
  (_, v1_macs), (v1_plain_params, _) = conversion_sizes(
    mobilenet.MobileNetV1(num_classes=10, stem="cifar"), 32
  )
  assert after == v1_macs
  # The same weights plus one PReLU slope per channel of the 8 blocks that carry a shortcut.
  slopes = 2 * (128 + 256 + 5 * 512 + 1024)
  assert plain_params == v1_plain_params + slopes
  assert abs(before / 1e6 - 83.4) < 0.01 * 83.4
  assert abs(after / 1e6 - 47.1) < 0.02 * 47.1
  print(
    f"\nMobileNetV2 {before / 1e6:.2f}M FLOPs -> RMNetV1 {after / 1e6:.2f}M (paper 83.4 -> 47.1)"
  )


def test_plain_weights_of_the_redesign_are_mobilenetv1_weights():
  model = mobilenet.mobilenetv2_to_v1(num_classes=10, stem="cifar", width=0.5)
  v1 = mobilenet.MobileNetV1(num_classes=10, stem="cifar", width=0.5)
  _, got = jax.eval_shape(lambda v: transforms.rm_convert(model, v), abstract_variables(model))
  _, want = jax.eval_shape(lambda v: transforms.rm_convert(v1, v), abstract_variables(v1))
  shapes = jax.tree.map(lambda a: a.shape, got["params"])
  # PReLU layers (the carried channels' activation) are ReLUs in MobileNetV1; all else matches.
  prelus = {name for name, p in shapes.items() if set(p) == {"slope"}}
  assert len(prelus) == 2 * 8
  assert {k: v for k, v in shapes.items() if k not in prelus} == jax.tree.map(
    lambda a: a.shape, want["params"]
  )


# --- exact conversion ---------------------------------------------------------------------

CASES = {
  # name: (factory, kwargs, input size)
  "v2_to_v1-relu-cifar": (mobilenet.mobilenetv2_to_v1, dict(stem="cifar"), 32),
  "v2_to_v1-relu6-w0.5-imagenet": (
    mobilenet.mobilenetv2_to_v1,
    dict(stem="imagenet", width=0.5, activation="relu6"),
    64,
  ),
  "v2_to_v1-relu6-w0.25-cifar": (
    mobilenet.mobilenetv2_to_v1,
    dict(stem="cifar", width=0.25, activation="relu6", bottleneck_multiplier=1),
    32,
  ),
  "v2-relu6-w0.5-cifar": (mobilenet.mobilenetv2, dict(stem="cifar", width=0.5), 32),
  "v2-relu-w0.35-imagenet": (
    mobilenet.mobilenetv2,
    dict(stem="imagenet", width=0.35, activation="relu"),
    64,
  ),
  "v1-relu6-w0.25-cifar": (mobilenet.MobileNetV1, dict(stem="cifar", width=0.25), 32),
}


def saturate(variables, shift=4.0):
  """Raises the bias of every BN that feeds an activation, so that ReLU6 clips as in trained
  networks (random BN statistics alone keep activations near 1). A shift, not a larger scale:
  scaling makes a random network chaotic, and float32 round-off then grows layer by layer."""

  def shifted(path, leaf):
    names = [p.key for p in path]
    if names[-1] == "bias" and names[-2].endswith("bn") and names[-2] != "project_bn":
      return leaf + shift
    return leaf

  return {**variables, "params": jax.tree_util.tree_map_with_path(shifted, variables["params"])}


def case(name):
  factory, kwargs, size = CASES[name]
  model = factory(num_classes=10, **kwargs)
  x = jax.random.uniform(jax.random.key(0), (2, size, size, 3), minval=-1.0)
  variables = random_variables(model, x, seed=4, zero_scale_fraction=0.05)
  if model.activation == "relu6":
    variables = saturate(variables)
  return model, variables, x


@pytest.mark.parametrize("keep_bn", [False, True], ids=["deploy", "keep_bn"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_conversion_is_exact(name, keep_bn):
  model, variables, x = case(name)
  plain, plain_vars = convert(model, variables, keep_bn=keep_bn)
  want = eval_logits(model, variables, x)
  chex.assert_trees_all_close(eval_logits(plain, plain_vars, x), want, atol=1e-4, rtol=0)
  assert 0.1 < float(jnp.abs(want).max()) < 1e3


def test_relu6_clipping_happens_and_carried_channels_are_not_clipped():
  # Without per-channel clipping this network's conversion would be off: check that both
  # kinds of channel occur on this input, so the exactness test above means something.
  model, variables, x = case("v2_to_v1-relu6-w0.25-cifar")
  plain, plain_vars = convert(model, variables)
  prelu = next(i for i, layer in enumerate(plain.layers) if isinstance(layer, plain_layers.PReLU))
  head = plain_layers.PlainNet(plain.layers[:prelu])
  params = {k: v for k, v in plain_vars["params"].items() if int(k.split("_")[1]) < prelu}
  pre = head.apply({"params": params}, x)
  spec = plain.layers[prelu]
  assert float(pre[..., : spec.clipped].max()) > 6.0  # ReLU6 channels saturate
  assert float(pre[..., spec.clipped :].min()) < 0.0  # carried channels go negative, unclipped


def test_rm_without_fusion_is_exact_too():
  model, variables, x = case("v2_to_v1-relu6-w0.25-cifar")
  plain, plain_vars = convert(model, variables, fuse=False)
  # Every project/expand pair and the last projection + 1x1 conv: 12 + 1 fewer 1x1 convs.
  assert len(plain.layers) == len(converted_layers(model)) + 13
  chex.assert_trees_all_close(
    eval_logits(plain, plain_vars, x), eval_logits(model, variables, x), atol=1e-4, rtol=0
  )


def test_residual_connections_are_gone():
  model, variables, x = case("v2-relu6-w0.5-cifar")
  plain, plain_vars = convert(model, variables)
  residual = count_residual_adds(lambda x: model.apply(variables, x), x)
  assert residual == sum(b.shortcut > 0 for b in model.layout()[1:-2])
  assert residual == 10  # Sandler et al.: 10 of the 17 blocks have a shortcut
  assert count_residual_adds(lambda x: plain.apply(plain_vars, x, structured=False), x) == 0


# --- the plain activation layers ----------------------------------------------------------


def test_prelu_layer_slopes_and_per_channel_clip():
  layer = plain_layers.PReLU(4, max_value=6.0, clipped=2)
  x = jnp.array([[-2.0, 8.0, -3.0, 9.0]])
  slope = jnp.array([0.0, 0.0, 1.0, 0.5])
  y = plain_layers.PlainNet((layer,)).apply({"params": {"layers_0": {"slope": slope}}}, x)
  np.testing.assert_array_equal(y, [[0.0, 6.0, -3.0, 9.0]])
  assert str(layer) == "PReLU(num_parameters=4, max_value=6, clipped=2)"
  assert str(plain_layers.ReLU(6.0)) == "ReLU6()"


# --- bad input ----------------------------------------------------------------------------


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="unknown activation 'gelu'"):
    mobilenet.mobilenetv2(activation="gelu").layout()
  with pytest.raises(ValueError, match="unknown stem 'tiny'"):
    mobilenet.MobileNetV1(stem="tiny").layout()
  with pytest.raises(ValueError, match="bottleneck_multiplier must be >= 1"):
    mobilenet.mobilenetv2_to_v1(bottleneck_multiplier=0)
  with pytest.raises(ValueError, match="needs stride 1"):
    mobilenet.InvertedResidual(16, 16, strides=2, hidden_features=32, shortcut_features=16)


def test_shortcut_without_expanding_conv_cannot_be_converted():
  spec = (mobilenet.BlockSpec(hidden=0, out=16, stride=1),)  # 16 -> 16: a shortcut, no expand
  model = mobilenet.MobileNetV2(spec, stem_features=16, last_features=32, num_classes=3)
  with pytest.raises(ValueError, match="has a shortcut but no expanding 1x1 conv"):
    jax.eval_shape(lambda v: transforms.rm_convert(model, v), abstract_variables(model))
