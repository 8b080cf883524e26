"""Backbone mode (rmjax.models.features): every family's feature maps, and the plain network's
after rm_convert(features=True) — the same maps at every tap, in both forms and structured;
taps in plain.json; a backbone converted without its head."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmjax
from rmjax import integrity, models, transforms
from rmjax.models.conv import conv_impl
from rmjax.models.features import feature_shapes
from rmjax.models.plain import Conv, GlobalAvgPool, PlainNet, ReLU
from rmjax.testing import random_variables

NARROW = dict(widths=(8, 8, 16, 16), stem_width=8)
THIN = dict(widths=(4, 4, 8, 8), stem_width=8, stage_sizes=(1, 2, 1, 1))
# A MobileNetV2 of five blocks: shortcuts, SE, stride changes; ReLU6 by default.
SMALL_V2 = tuple(
  models.BlockSpec(hidden, out, stride)
  for hidden, out, stride in ((0, 8, 1), (24, 8, 2), (24, 8, 1), (24, 16, 2), (48, 16, 1))
)
# name: (registry name or model class, arguments, image side, strides of the taps). Both stems;
# every block family; the bottleneck pre-activation ResNet and the MobileNetV2s are where
# fusion (Eq. 5) would cross a tap; SE in a ResNet and in a MobileNetV2; a RepVGG with
# reserving blocks.
NETWORKS = {
  "resnet18_cifar": ("resnet18", dict(stem="cifar", **NARROW), 16, (1, 2, 4, 8)),
  "resnet50_imagenet": ("resnet50", dict(stem="imagenet", **THIN), 32, (4, 8, 16, 32)),
  "seresnet18": (
    "seresnet18",
    dict(stem="imagenet", se_reduction=4, stage_sizes=(1, 2, 1, 1), **NARROW),
    32,
    (4, 8, 16, 32),
  ),
  "preactresnet18": ("preactresnet18", dict(stem="cifar", **NARROW), 16, (1, 2, 4, 8)),
  "preactresnet50": ("preactresnet50", dict(stem="imagenet", **THIN), 32, (4, 8, 16, 32)),
  "rmnext": (
    "rmnext26x3_32",
    dict(stem="imagenet", widths=(16, 32, 32, 32), stage_sizes=(1, 2, 1, 1), channels_per_group=8),
    32,
    (4, 8, 16, 32),
  ),
  "mobilenetv2_se": (
    models.MobileNetV2,
    dict(blocks=SMALL_V2, stem_features=16, last_features=32, stem="imagenet", se_ratio=0.25),
    32,
    (2, 4, 8),
  ),
  "mobilenetv2_to_v1": (
    "mobilenetv2_to_v1",
    dict(stem="cifar", width=0.25, activation="relu6"),
    16,
    (1, 2, 4, 8, 16),
  ),
  "mobilenetv1": ("mobilenetv1", dict(stem="imagenet", width=0.25), 32, (2, 4, 8, 16, 32)),
  "repvgg_reserving": (
    "repvgg21",
    dict(stem="imagenet", reserve_ratio=0.5, stage_sizes=(3, 3, 1, 1), **NARROW),
    32,
    (4, 8, 16, 32),
  ),
}
# Each conversion form and structured execution cost a compilation: the kept-BN form for a
# ResNet and a pre-activation ResNet (whose kept BNs sit on either side of a tap), structured
# execution for the main kinds of Dirac record (identity and projection merges,
# pre-activation copies, SE, grouped carries).
KEPT_BN = {"resnet50_imagenet", "preactresnet50"}
STRUCTURED = {"resnet18_cifar", "preactresnet50", "mobilenetv2_se", "rmnext"}
convert = jax.jit(
  transforms.rm_convert, static_argnums=0, static_argnames=("keep_bn", "features", "fuse")
)


@functools.cache
def network(name: str):
  """`(model, variables, x)`: random non-trivial BN (a few exact-zero scales), 2 images."""
  factory, kwargs, size, _ = NETWORKS[name]
  if isinstance(factory, str):
    model = models.create(factory, num_classes=10, **kwargs)
  else:
    model = factory(num_classes=10, **kwargs)
  x = jax.random.uniform(jax.random.key(1), (2, size, size, 3), jnp.float32)
  return model, random_variables(model, x, seed=2, zero_scale_fraction=0.05), x


def run(apply, variables, x):
  with jax.default_matmul_precision("highest"):
    return jax.jit(apply)(variables, x)


def assert_same_maps(got, want):
  """Each map within the project's rule, 1e-4 x max(1, max |value|); the maps mean something."""
  assert len(got) == len(want)
  for g, w in zip(got, want, strict=True):
    scale = float(jnp.abs(w).max())
    assert scale > 0.1
    chex.assert_trees_all_close(g, w, atol=1e-4 * max(1.0, scale), rtol=0)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_plain_network_returns_the_models_feature_maps(name):
  model, variables, x = network(name)
  _, _, size, strides = NETWORKS[name]
  # XLA's convolutions: exactness does not depend on the conv formulation (conv_test), and at
  # these sizes the CPU formulations' compile time dominates.
  with conv_impl("lax"):
    want = run(functools.partial(model.apply, train=False, features=True), variables, x)
    assert len(want) == len(model.feature_taps())
    sides = [w.shape[1] for w in want]
    assert [size // s for s in strides] == sides
    for keep_bn in (False, True) if name in KEPT_BN else (False,):
      plain, plain_vars = convert(model, variables, keep_bn=keep_bn, features=True)
      got = run(functools.partial(plain.apply, features=True), plain_vars, x)
      assert_same_maps(got, want)
      if name in STRUCTURED and not keep_bn:
        fast = run(functools.partial(plain.apply, features=True, structured=True), plain_vars, x)
        assert_same_maps(fast, want)


@pytest.mark.parametrize(
  "name, extra_convs",
  [
    ("resnet18_cifar", 0),  # a tap after each block's last ReLU: nothing to fuse across
    ("rmnext", 0),
    ("preactresnet18", 0),  # a basic block's merging conv is 3x3: never fused
    ("preactresnet50", 4),  # merging 1x1 + next block's BN 1x1: one pair per tap kept apart
    ("mobilenetv2_to_v1", 5),  # project + next expand (or the last 1x1 conv), per tap
  ],
)
def test_taps_stop_fusion_and_cost_nothing_elsewhere(name, extra_convs):
  """The layers with taps are those without, except that no 1x1 pair fused across a tap."""
  model, variables, _ = network(name)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  tapped, _ = jax.eval_shape(functools.partial(convert, model, features=True), abstract)
  plain, _ = jax.eval_shape(functools.partial(convert, model), abstract)
  assert plain.taps == () and len(tapped.taps) == len(model.feature_taps())
  convs = [sum(isinstance(layer, Conv) for layer in p.layers) for p in (tapped, plain)]
  assert convs[0] - convs[1] == extra_convs
  if not extra_convs:
    assert tapped.layers == plain.layers


def test_a_backbone_without_head_converts_to_a_plain_backbone():
  """Variables initialised with features=True (no head) give a plain network that ends at the
  last tap; its feature maps are the model's, and so are its shapes (feature_shapes)."""
  model, full, x = network("resnet18_cifar")
  backbone = {c: {k: v for k, v in tree.items() if k != "head"} for c, tree in full.items()}
  assert "head" in full["params"] and "head" not in backbone["params"]
  plain, plain_vars = convert(model, backbone, features=True)
  assert plain.taps[-1] == len(plain.layers) - 1
  assert not any(isinstance(layer, GlobalAvgPool) for layer in plain.layers)
  with conv_impl("lax"):
    want = run(functools.partial(model.apply, train=False, features=True), backbone, x)
    assert_same_maps(run(functools.partial(plain.apply, features=True), plain_vars, x), want)
  shape = x.shape[1:]
  assert feature_shapes(plain, plain_vars, shape) == feature_shapes(model, backbone, shape)
  # Logits need the head: without features, the variables do not fit the model.
  with pytest.raises(ValueError, match="missing params/head"):
    transforms.rm_convert(model, backbone)


def test_plain_json_round_trips_the_taps_and_old_files_load(tmp_path):
  model, variables, x = network("resnet18_cifar")
  plain, plain_vars = convert(model, variables, features=True)
  rmjax.save_plain(str(tmp_path / "plain"), plain, plain_vars, input_shape=x.shape[1:])
  arch = json.loads((tmp_path / "plain" / "plain.json").read_text())
  assert arch["taps"] == list(plain.taps)
  loaded, loaded_vars = rmjax.load_plain(str(tmp_path / "plain"))
  assert loaded == plain and loaded.taps == plain.taps  # the same layers and taps ...
  chex.assert_trees_all_equal(loaded_vars, plain_vars)  # ... and weights: the same maps
  # A file written before taps existed (no "taps" key, and no digest then) loads without them.
  del arch["taps"]
  (tmp_path / "plain" / "plain.json").write_text(json.dumps(arch))
  os.remove(integrity.digest_file(str(tmp_path / "plain")))
  assert rmjax.load_plain(str(tmp_path / "plain"))[0].taps == ()
  # Taps out of order are refused even in a file whose digest matches.
  arch["taps"] = [3, 2]
  (tmp_path / "plain" / "plain.json").write_text(json.dumps(arch))
  integrity.seal(str(tmp_path / "plain"))
  with pytest.raises(rmjax.plain_io.PlainFormatError, match="strictly increasing"):
    rmjax.load_plain(str(tmp_path / "plain"))


def test_a_plain_network_given_to_rm_convert_keeps_its_taps():
  """The kept-BN form with taps, folded to the deploy form: taps move with the folded layers."""
  model, variables, x = network("preactresnet50")
  kept, kept_vars = convert(model, variables, keep_bn=True, features=True)
  deployed, deployed_vars = convert(kept, kept_vars)
  assert len(deployed.layers) < len(kept.layers) and len(deployed.taps) == len(kept.taps)
  with conv_impl("lax"):
    want = run(functools.partial(kept.apply, features=True), kept_vars, x)
    assert_same_maps(run(functools.partial(deployed.apply, features=True), deployed_vars, x), want)


def test_taps_are_checked_and_needed():
  with pytest.raises(ValueError, match="strictly increasing"):
    PlainNet((ReLU(), ReLU()), taps=(1, 1))
  with pytest.raises(ValueError, match="strictly increasing"):
    PlainNet((ReLU(),), taps=(1,))
  x = np.ones((1, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match="needs a PlainNet with taps"):
    PlainNet((ReLU(),)).apply({}, x, features=True)
  tapped = PlainNet((Conv(3, 4, 3, padding=1), ReLU(), GlobalAvgPool()), taps=(1,))
  assert "(1): ReLU()  -> features[0]" in str(tapped)
