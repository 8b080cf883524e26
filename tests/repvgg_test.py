"""RepVGG and the RM operation's RepVGG (Sec. 4.3, Fig. 5, Sec. 5.2): exact conversion, layer
shapes independent of the reserve ratio, the RepVGG paper's parameter counts, errors."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import models, transforms
from rmjax.cost import count_params, count_residual_adds
from rmjax.models import plain as plain_layers
from rmjax.models.repvgg import RepBlock, ReservingRepBlock
from rmjax.testing import eval_logits, random_variables
from rmjax.transforms.convert import assemble, batchnorm_of
from rmjax.transforms.repvgg import convert_reserving_rep_block

ATOL = 1e-4
CONVERT = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames="keep_bn")


def damp_branches(variables, factor=0.8):
  """Scales every block's BNs (each the last layer of its branch), as training would: with
  three undamped random branches per layer, 22 layers reach logits ~1e4 (float32 round-off alone
  then exceeds ATOL); 0.8 keeps them between 1 and 100 and still input-dependent."""
  params = dict(variables["params"])
  for name, block in params.items():
    if name.startswith("layer"):
      params[name] = {
        k: {**v, "scale": v["scale"] * factor} if k.startswith("bn") else v
        for k, v in block.items()
      }
  return {**variables, "params": params}


@functools.cache
def random_net(name, **kwargs):
  """`(model, variables, x)` for a registered RepVGG on CIFAR inputs, BN statistics random."""
  model = models.create(name, num_classes=10, stem="cifar", **kwargs)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), jnp.float32)
  variables = random_variables(model, x, seed=3, zero_scale_fraction=0.05)
  return model, damp_branches(variables), x


def assert_converts_exactly(model, variables, x):
  plain, plain_vars = CONVERT(model, variables)
  want = eval_logits(model, variables, x)
  got = eval_logits(plain, plain_vars, x)
  print(
    f"max |logit diff| {float(jnp.abs(got - want).max()):.3g}, max |logit| "
    f"{float(jnp.abs(want).max()):.3g}"
  )
  chex.assert_trees_all_close(got, want, atol=ATOL, rtol=0)
  # Meaningful only if the logits are not tiny, and depend on the input, not just on biases.
  assert 0.1 < float(jnp.abs(want).max()) < 1e3
  assert float(jnp.abs(want[0] - want[1]).max()) > 0.1
  return plain, plain_vars


# Two true presets, one grouped; two groups are covered by the repvgg21 cases below (same class,
# same grouped layers), which keeps the file's XLA:CPU compile time down.
@pytest.mark.parametrize("name", ["repvgg_a0", "repvgg_b1g4"])
def test_presets_convert_exactly(name):
  model, variables, x = random_net(name)
  plain, _ = assert_converts_exactly(model, variables, x)
  convs = [layer for layer in plain.layers if isinstance(layer, plain_layers.Conv)]
  assert {(c.kernel_size, c.padding) for c in convs} == {(3, 1)}
  assert len(convs) == 1 + sum(model.stage_sizes)


# Fig. 8's depth series on CIFAR, at reduced width (XLA:CPU compile time). Grouped: RepVGG's
# layers 2, 4, ..., 26; in repvgg37 the later reserving blocks are ungrouped.
DEPTHS = {
  "repvgg21": dict(widths=(32, 64, 128, 256), stem_width=32, groups=2),
  "repvgg37": dict(widths=(16, 32, 64, 128), stem_width=16, groups=4),
}


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_reserving_repvgg_converts_exactly(name, ratio):
  model, variables, x = random_net(name, reserve_ratio=ratio, **DEPTHS[name])
  kinds = {type(block) for block in model.layout()}
  assert (ReservingRepBlock in kinds) == (ratio > 0)
  assert_converts_exactly(model, variables, x)


def test_plain_network_has_no_residual_connection():
  model = models.create("repvgg21", stem="cifar", reserve_ratio=0.5, **DEPTHS["repvgg21"])
  x = jnp.ones((1, 32, 32, 3))
  variables = random_variables(model, x)

  def plain_logits(x):
    # Traced, not compiled: the conversion only touches constants, so it adds no taint.
    plain, plain_vars = transforms.rm_convert(model, variables)
    return plain.apply(plain_vars, x, structured=False)

  assert count_residual_adds(lambda x: model.apply(variables, x, train=False), x) > 0
  assert count_residual_adds(plain_logits, x) == 0


def abstract_plain(model, *, keep_bn=False):
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  return jax.eval_shape(lambda v: transforms.rm_convert(model, v, keep_bn=keep_bn), variables)


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_plain_layers_are_the_same_for_every_ratio(name):
  # Fig. 5 (c): "the converted plain model always keeps the same structure when 0 <= ratio < 1".
  specs = {
    ratio: abstract_plain(models.create(name, stem="cifar", reserve_ratio=ratio, **DEPTHS[name]))
    for ratio in (0.0, 0.25, 0.5, 0.75)
  }
  layers = specs[0.0][0].layers
  for plain, plain_vars in specs.values():
    assert plain.layers == layers
    chex.assert_trees_all_equal_shapes(plain_vars, specs[0.0][1])
  # VGG-like: a 3x3 conv and a ReLU per layer, some grouped; then pool and classifier.
  depth = int(name.removeprefix("repvgg"))
  assert all(isinstance(layer, plain_layers.Conv) for layer in layers[0 : 2 * depth : 2])
  assert all(isinstance(layer, plain_layers.ReLU) for layer in layers[1 : 2 * depth : 2])
  assert {layer.groups for layer in layers[0 : 2 * depth : 2]} == {1, DEPTHS[name]["groups"]}
  assert len(layers) == 2 * depth + 2


def test_keep_bn_still_gives_the_deploy_form():
  # Three BNs cannot be kept as one: the module docstring of rmjax.transforms.repvgg.
  model = models.create("repvgg21", stem="cifar", reserve_ratio=0.5, **DEPTHS["repvgg21"])
  assert abstract_plain(model, keep_bn=True)[0] == abstract_plain(model)[0]


def test_ratio_zero_is_repvgg():
  # A reserving block that reserves nothing is a RepBlock: same variables, same outputs.
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  rep, reserving = RepBlock(8, 8, groups=2), ReservingRepBlock(8, 0.0, groups=2)
  variables = random_variables(rep, x, seed=5)
  chex.assert_trees_all_equal_shapes(
    jax.eval_shape(reserving.init, jax.random.key(0), x),
    jax.eval_shape(rep.init, jax.random.key(0), x),
  )
  chex.assert_trees_all_close(
    eval_logits(reserving, variables, x), eval_logits(rep, variables, x), atol=1e-6, rtol=0
  )
  # The network with ratio 0 is RepVGG, and it names its variables like any ratio's network.
  net = models.create("repvgg21", stem="cifar", reserve_ratio=0.0)
  assert {type(block) for block in net.layout()} == {RepBlock, models.Head}
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  paths = {}
  for ratio in (0.0, 0.5):
    model = models.create("repvgg21", stem="cifar", reserve_ratio=ratio)
    tree = jax.eval_shape(lambda x, model=model: model.init(jax.random.key(0), x), x)
    paths[ratio] = jax.tree.structure(tree)
  assert paths[0.0] == paths[0.5]


@pytest.mark.parametrize(
  "in_features, features, strides, groups",
  [(8, 8, 1, 1), (8, 8, 1, 4), (8, 16, 2, 2), (8, 8, 2, 2), (3, 8, 2, 1)],
)
def test_repvgg_reparam_is_the_block_before_its_relu(in_features, features, strides, groups):
  block = RepBlock(in_features, features, strides, groups)
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, in_features))  # odd size, signed inputs
  variables = random_variables(block, x, seed=7, zero_scale_fraction=0.1)
  p = variables["params"]
  reparam = jax.jit(functools.partial(transforms.repvgg_reparam, groups=groups))
  layer = reparam(
    p["conv3x3"]["kernel"],
    batchnorm_of(variables, "bn3x3"),
    p["conv1x1"]["kernel"],
    batchnorm_of(variables, "bn1x1"),
    batchnorm_of(variables, "bn_identity") if block.has_identity else None,
  )
  assert layer["kernel"].shape == (3, 3, in_features // groups, features)
  conv = plain_layers.Conv(in_features, features, 3, strides, padding=1, groups=groups)
  plain = plain_layers.PlainNet((conv, plain_layers.ReLU()))
  want = eval_logits(block, variables, x)
  got = eval_logits(plain, {"params": {"layers_0": layer}}, x)
  chex.assert_trees_all_close(got, want, atol=ATOL, rtol=0)
  assert float(jnp.abs(want).max()) > 0.1


def test_repvgg_reparam_rejects_an_impossible_identity():
  k, bn = jnp.zeros((3, 3, 4, 6)), {n: jnp.ones(6) for n in ("scale", "bias", "mean", "var")}
  with pytest.raises(ValueError, match="as many inputs as outputs, got 8 -> 6"):
    transforms.repvgg_reparam(k, bn, bn_identity=bn, groups=2)
  with pytest.raises(ValueError, match="an input channel of its own group"):
    transforms.repvgg_reparam(k, bn, bn_identity=bn, groups=2, identity_channels=range(6))
  layer = transforms.repvgg_reparam(
    k, bn, bn_identity=bn, groups=2, identity_channels=[1, 2, 3, 5, 6, 7]
  )
  assert layer["kernel"].shape == (3, 3, 4, 6)


def test_reserving_block_keeps_the_first_channels_of_each_group():
  block = ReservingRepBlock(12, 0.5, groups=3, name="b")  # 4 channels per group, 2 reserved
  assert block.reserved_per_group == 2
  np.testing.assert_array_equal(block.computed_channels, [2, 3, 6, 7, 10, 11])
  x = jax.random.uniform(jax.random.key(0), (2, 6, 6, 12))  # block inputs are post-ReLU
  variables = random_variables(block, x, seed=9, zero_scale_fraction=0.1)
  assert variables["params"]["conv3x3"]["kernel"].shape == (3, 3, 4, 6)
  y = eval_logits(block, variables, x)
  reserved = [0, 1, 4, 5, 8, 9]
  np.testing.assert_array_equal(y[..., reserved], x[..., reserved])
  # Converted alone: one grouped 12 -> 12 conv whose reserved outputs are Dirac copies.
  convert = jax.jit(lambda v: assemble(convert_reserving_rep_block(block, v, transforms.Options())))
  plain, plain_vars = convert(variables)
  assert plain.layers[0] == plain_layers.Conv(12, 12, 3, 1, padding=1, groups=3)
  chex.assert_trees_all_close(eval_logits(plain, plain_vars, x), y, atol=ATOL, rtol=0)


# RepVGG paper (Ding et al. 2021), Table 4, params (M), ImageNet, 1000 classes.
REPVGG_TABLE_4 = {
  "repvgg_a0": 8.30,
  "repvgg_a1": 12.78,
  "repvgg_a2": 25.49,
  "repvgg_b0": 14.33,
  "repvgg_b1": 51.82,
  "repvgg_b1g2": 41.36,
  "repvgg_b1g4": 36.12,
  "repvgg_b2": 80.31,
  "repvgg_b2g4": 55.77,
  "repvgg_b3": 110.96,
  "repvgg_b3g4": 75.62,
}


@pytest.mark.parametrize("name", sorted(REPVGG_TABLE_4))
def test_deploy_parameter_counts_match_the_repvgg_paper(name):
  model = models.create(name, num_classes=1000, stem="imagenet")
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  _, plain_vars = jax.eval_shape(lambda v: transforms.rm_convert(model, v), variables)
  deploy, train = count_params(plain_vars["params"]), count_params(variables["params"])
  # The table counts the deployed network, truncated to two decimals (A0: 8,309,384 -> 8.30);
  # the training network has ~10% more (the 1x1 kernels and the BNs).
  assert math.floor(deploy / 1e4) / 100 == REPVGG_TABLE_4[name]
  assert train > 1.05 * deploy


def test_bad_arguments_are_reported():
  with pytest.raises(ValueError, match="RepVGG of half the depth"):
    models.create("repvgg21", reserve_ratio=1.0)
  with pytest.raises(ValueError, match=r"must be in \[0, 1\), got -0.25"):
    models.create("repvgg21", reserve_ratio=-0.25)
  with pytest.raises(ValueError, match="unknown stem 'vgg'"):
    models.create("repvgg_a0", stem="vgg")
  with pytest.raises(ValueError, match="must have the same length"):
    models.RepVGG(stage_sizes=(1, 1), widths=(8,))
  with pytest.raises(ValueError, match="layer1_1: reserve_ratio 0.01 reserves no channel"):
    models.create("repvgg21", reserve_ratio=0.01).layout()
  with pytest.raises(ValueError, match=r"layer1_1: in_features \(12\) must be .* by groups \(8\)"):
    models.RepVGG(stage_sizes=(2,), widths=(12,), stem_width=12, groups=8).layout()
