"""rm_convert on whole ResNets: equivalence, structure, parameter counts, jit, errors."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model

from rmjax import models, transforms
from rmjax.cost import count_params, count_residual_adds
from rmjax.models import plain as plain_layers
from rmjax.testing import eval_logits, max_abs_difference, random_variables

ATOL = 1e-4


def logits_close(model, variables, plain, plain_vars, x):
  want = eval_logits(model, variables, x)
  got = eval_logits(plain, plain_vars, x)
  chex.assert_trees_all_close(got, want, atol=ATOL, rtol=0)
  # The check is meaningful only if the logits are not trivially small.
  assert float(jnp.abs(want).max()) > 0.1


@pytest.mark.parametrize("keep_bn", [False, True], ids=["deploy", "keep_bn"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_plain_network_reproduces_logits(name, stem, keep_bn):
  model, variables, x = random_model(name, stem)
  plain, plain_vars = transforms.rm_convert(model, variables, keep_bn=keep_bn)
  logits_close(model, variables, plain, plain_vars, x)
  kinds = {type(layer) for layer in plain.layers}
  if keep_bn:
    assert plain_layers.BatchNorm in kinds
  else:
    assert kinds <= {
      plain_layers.Conv,
      plain_layers.ReLU,
      plain_layers.MaxPool,
      plain_layers.GlobalAvgPool,
      plain_layers.Dense,
    }


def test_dense_reserve_form_is_equivalent_too():
  model, variables, x = random_model("resnet50", "cifar")
  for keep_bn in (False, True):
    plain, plain_vars = transforms.rm_convert(model, variables, keep_bn=keep_bn, dense_reserve=True)
    assert all(getattr(layer, "groups", 1) == 1 for layer in plain.layers)
    logits_close(model, variables, plain, plain_vars, x)


@pytest.mark.parametrize("keep_bn", [False, True])
def test_plain_network_has_no_residual_connection(resnet18_cifar, keep_bn):
  model, variables, x = resnet18_cifar
  plain, plain_vars = transforms.rm_convert(model, variables, keep_bn=keep_bn)
  # The detector does find the 8 residual additions of the original ...
  assert count_residual_adds(lambda x: model.apply(variables, x, train=False), x) == 8
  # ... and none in the plain network.
  assert count_residual_adds(lambda x: plain.apply(plain_vars, x, structured=False), x) == 0
  # The layer sequence chains: each layer consumes the width the previous one produced.
  width = x.shape[-1]
  for i, layer in enumerate(plain.layers):
    if isinstance(layer, plain_layers.Conv | plain_layers.Dense):
      assert layer.in_features == width, f"layer {i}: {layer} after width {width}"
      width = layer.out_features
    elif isinstance(layer, plain_layers.BatchNorm):
      assert layer.features == width
  # Variables exist exactly for the layers with weights, with the declared shapes.
  expected = jax.eval_shape(plain.init, jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes_and_dtypes(expected, plain_vars)


def conv_weights(plain, plain_vars):
  return [
    plain_vars["params"][f"layers_{i}"]["kernel"]
    for i, layer in enumerate(plain.layers)
    if isinstance(layer, plain_layers.Conv)
  ]


def test_basic_block_parameter_counts_match_the_paper():
  c = 16
  model = models.ResNet(
    stage_sizes=(1, 1), widths=(c, 2 * c), strides=(1, 2), stem="cifar", stem_width=c, num_classes=3
  )
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  plain, plain_vars = jax.eval_shape(lambda v: transforms.rm_convert(model, v), variables)
  stem, b1c1, b1c2, b2c1, b2c2 = [k.size for k in conv_weights(plain, plain_vars)]
  # Basic block (Sec. 4.1): a C -> 2C and a 2C -> C 3x3 conv.
  assert (b1c1, b1c2) == (9 * c * 2 * c, 9 * 2 * c * c)
  # Downsample block, Appendix A.1 method (b): C x 3C and 3C x 2C 3x3 convs = 81 C^2.
  assert b2c1 + b2c2 == 81 * c * c
  assert (b2c1, b2c2) == (27 * c * c, 54 * c * c)


def test_resnet50_parameter_counts_grouped_and_dense():
  model = models.create("resnet50", num_classes=1000, stem="imagenet")
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames="dense_reserve")
  counts = {"original": count_params(variables["params"])}
  for dense in (False, True):
    out = jax.eval_shape(
      lambda v, dense=dense: convert(model, v, dense_reserve=dense)[1], variables
    )
    counts["dense" if dense else "grouped"] = count_params(out["params"])
  fc = 2048 * 1000 + 1000
  print({k: f"{(v - fc) / 1e6:.1f}M without fc" for k, v in counts.items()})
  # The paper's figures for the published (dense) form: 23.5M -> 275.3M.
  assert round((counts["original"] - fc) / 1e6, 1) == 23.5
  assert round((counts["dense"] - fc) / 1e6, 1) == 275.3
  # Dirac groups: per bottleneck the 3x3 adds 9*M*C weights instead of 9*((M+C)^2 - M^2).
  saved = 0
  for block in model.layout():
    if isinstance(block, models.Bottleneck):
      m, c = block.features, block.in_features
      saved += 9 * ((m + c) ** 2 - m * m) - 9 * m * c
  assert counts["dense"] - counts["grouped"] == saved
  assert counts["grouped"] < counts["dense"] / 2.5


def test_jit_gives_the_same_result_as_eager(resnet18_cifar):
  model, variables, x = resnet18_cifar
  eager_plain, eager_vars = transforms.rm_convert(model, variables)
  jit_plain, jit_vars = jax.jit(transforms.rm_convert, static_argnums=0)(model, variables)
  assert jit_plain == eager_plain
  chex.assert_trees_all_close(jit_vars, eager_vars, atol=1e-6, rtol=1e-6)
  jitted_keep = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames="keep_bn")
  plain, plain_vars = jitted_keep(model, variables, keep_bn=True)
  assert max_abs_difference(model, variables, plain, plain_vars, x) < ATOL


def test_inputs_are_not_mutated(resnet18_cifar):
  model, variables, _ = resnet18_cifar
  snapshot = jax.tree.map(np.array, variables)
  structure = jax.tree.structure(variables)
  transforms.rm_convert(model, variables)
  transforms.rm_convert(model, variables, keep_bn=True)
  assert jax.tree.structure(variables) == structure
  chex.assert_trees_all_equal(jax.tree.map(np.array, variables), snapshot)


def test_plain_network_prints_like_table_4(resnet18_cifar):
  model, variables, _ = resnet18_cifar
  plain, _ = transforms.rm_convert(model, variables)
  lines = str(plain).splitlines()
  assert lines[0] == "PlainNet("
  assert lines[1] == "  (0): Conv(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
  assert lines[2] == "  (1): ReLU()"
  assert lines[3] == "  (2): Conv(64, 128, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
  # layer2_0, a downsample block (A.1 method (b)): C -> 2C + C at stride 2, then 3C -> 2C.
  assert lines[11] == "  (10): Conv(64, 192, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))"
  assert lines[13] == "  (12): Conv(192, 128, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
  assert lines[-2] == "  (35): Dense(in_features=512, out_features=10)"
  assert lines[-1] == ")"


# --- bad input ------------------------------------------------------------------------------


def without(tree, *path):
  tree = dict(tree)
  if len(path) == 1:
    del tree[path[0]]
  else:
    tree[path[0]] = without(tree[path[0]], *path[1:])
  return tree


def test_missing_key_is_named(resnet18_cifar):
  model, variables, _ = resnet18_cifar
  broken = without(variables, "params", "layer1_0", "conv1", "kernel")
  with pytest.raises(
    ValueError,
    match=r"missing params/layer1_0/conv1/kernel \(expected shape "
    r"\(3, 3, 64, 64\)\)",
  ):
    transforms.rm_convert(model, broken)
  with pytest.raises(ValueError, match="missing batch_stats/layer2_0/proj_bn/var"):
    transforms.rm_convert(model, without(variables, "batch_stats", "layer2_0", "proj_bn", "var"))


def test_wrong_shape_is_named(resnet18_cifar):
  model, variables, _ = resnet18_cifar
  broken = jax.tree.map(lambda a: a, variables)
  broken["params"] = dict(broken["params"])
  broken["params"]["head"] = {"fc": {"kernel": jnp.zeros((512, 100)), "bias": jnp.zeros(100)}}
  with pytest.raises(ValueError) as e:
    transforms.rm_convert(model, broken)
  message = str(e.value)
  assert "params/head/fc/kernel has shape (512, 100), expected (512, 10)" in message
  assert "params/head/fc/bias has shape (100,), expected (10,)" in message
  assert "2 problem(s)" in message


def test_variables_of_another_model_are_rejected(resnet18_cifar):
  model, variables, _ = resnet18_cifar
  other = models.create("resnet34", num_classes=10, stem="cifar")
  with pytest.raises(ValueError) as e:
    transforms.rm_convert(other, variables)
  # A whole missing block is one problem, named by its path (resnet34 has 3 blocks in layer1).
  assert "missing params/layer1_2 (expected, among others, params/layer1_2/" in str(e.value)
  assert "missing batch_stats/layer1_2 " in str(e.value)
  with pytest.raises(ValueError, match="unexpected params/extra/kernel"):
    transforms.rm_convert(
      model, {**variables, "params": {**variables["params"], "extra": {"kernel": jnp.zeros(1)}}}
    )


def test_not_a_variables_dict():
  model, _, _ = random_model("resnet18", "cifar")
  with pytest.raises(ValueError, match="'params' collection"):
    transforms.rm_convert(model, [1, 2, 3])


def test_model_without_converter():
  dense = nn.Dense(3)
  variables = dense.init(jax.random.key(0), jnp.zeros((1, 2)))
  with pytest.raises(ValueError, match="rm_convert has no converter for Dense.*BasicBlock"):
    transforms.rm_convert(dense, variables)


class UnknownBlock(models.BasicBlock):
  """A block type with no registered converter."""


class ResNetWithUnknownBlock(models.ResNet):
  def layout(self):
    parts = list(super().layout())
    b = parts[1]
    parts[1] = UnknownBlock(b.in_features, b.features, b.strides, parent=None, name=b.name)
    return tuple(parts)


def test_block_without_converter_is_named():
  model = ResNetWithUnknownBlock(
    stage_sizes=(1,), widths=(4,), strides=(1,), stem="cifar", stem_width=4, num_classes=2
  )
  variables = random_variables(model, jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="no converter for block 'layer1_0' of type UnknownBlock"):
    transforms.rm_convert(model, variables)


@pytest.mark.parametrize("keep_bn", [False, True], ids=["deploy", "keep_bn"])
@pytest.mark.parametrize("name", ["resnet20", "resnet50", "rmnext26x3_32"])
def test_shortcut_bn_converts_exactly_and_scores_the_reserved_channels(name, keep_bn):
  """A BN on the identity shortcut (sparsity training, Sec. 4.2): negative and zero scales
  included, the plain network is exact, and in the fine-tuning form the reserved channels' BN
  is |scale| x / sigma with the shortcut BN's |scale| and variance — its scale is the one that
  sparsity training drives to zero."""
  small = {"resnet50": dict(widths=(8, 16), stage_sizes=(2, 1), strides=(1, 2), stem_width=8)}
  small["rmnext26x3_32"] = dict(
    widths=(16, 32), stage_sizes=(2, 1), strides=(1, 2), stem_width=16, channels_per_group=8
  )
  model = models.create(name, num_classes=10, stem="cifar", shortcut_bn=True, **small.get(name, {}))
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  variables = random_variables(model, x, seed=5, zero_scale_fraction=0.2)
  assert "shortcut_bn" in variables["params"]["layer1_1"]
  convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames="keep_bn")
  plain, plain_vars = convert(model, variables, keep_bn=keep_bn)
  logits_close(model, variables, plain, plain_vars, x)
  if keep_bn:
    bn = variables["params"]["layer1_1"]["shortcut_bn"]
    stats = variables["batch_stats"]["layer1_1"]["shortcut_bn"]
    importance = np.abs(bn["scale"])
    # The first reserving BN of block layer1_1, after those of layer1_0: a basic block has one
    # (conv1), a three-conv block two (conv1 and the middle conv).
    per_block = 1 if name == "resnet20" else 2
    reserving = [
      i
      for i, layer in enumerate(plain.layers)
      if isinstance(layer, plain_layers.BatchNorm) and layer.reserved
    ]
    i = reserving[per_block]
    reserved = plain.layers[i].reserved
    scale = plain_vars["params"][f"layers_{i}"]["scale"][-reserved:]
    np.testing.assert_allclose(scale, importance, rtol=1e-6, atol=0)
    var = plain_vars["batch_stats"][f"layers_{i}"]["var"][-reserved:]
    np.testing.assert_allclose(var, stats["var"], rtol=1e-6, atol=0)
    assert (importance == 0).any()
