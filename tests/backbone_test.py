"""A residual backbone inside a user's Flax module (linen: the variables' sub-tree; NNX: the
bridge), converted and swapped for its plain network: the whole module's outputs unchanged.
The two examples of docs/backbones.md run here as written, then again with random BN."""

import os
import re
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmjax import models, nnx_bridge, transforms
from rmjax.models.conv import conv_impl
from rmjax.models.plain import PlainNet
from rmjax.testing import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import fpn_example  # noqa: E402  (the worked example's script)

NARROW = dict(stem="imagenet", widths=(8, 8, 16, 16), stem_width=8)


def docs_example(name: str) -> dict:
  """Runs the Python block of docs/backbones.md marked `<!-- backbones: NAME -->`, as
  written; returns its variables."""
  with open(os.path.join(ROOT, "docs", "backbones.md")) as f:
    doc = f.read()
  code = re.search(rf"<!-- backbones: {name} -->\n```python\n(.*?)```", doc, re.S)[1]
  scope = {}
  with conv_impl("lax"):  # the examples' networks are tiny: XLA's convs compile fastest
    exec(code, scope)
  return scope


def assert_close(got, want):
  scale = max(1.0, float(jnp.max(jnp.abs(want))))
  assert float(jnp.max(jnp.abs(want))) > 0.1
  chex.assert_trees_all_close(got, want, atol=1e-4 * scale, rtol=0)


def test_the_fpn_detector_with_a_converted_backbone_computes_the_same():
  """The worked example's detector (scripts/fpn_example.py), its backbone's BN random: after
  `convert_backbone` the FPN and classifier variables are the very same arrays and the
  detector's scores equal."""
  detector = fpn_example.Detector(models.create("resnet18", **NARROW))
  data = np.zeros((4, 28, 28), np.uint8) + np.arange(28, dtype=np.uint8)[:, None] * 9
  x, targets = fpn_example.scenes(data, np.arange(4), 2, seed=0)
  assert x.shape == (2, 64, 64, 1) and targets.shape == (2, 16, 16) and targets.max() > 0
  variables = random_variables(detector, x, seed=3, zero_scale_fraction=0.05)
  assert "head" not in variables["params"]["backbone"]  # features=True: no head to train
  plain_detector, plain_vars = fpn_example.convert_backbone(detector, variables)
  assert isinstance(plain_detector.backbone, PlainNet)
  for neck in ("fpn", "classifier"):
    assert plain_vars["params"][neck] is variables["params"][neck]
  assert "batch_stats" not in plain_vars  # the deploy form: every BN folded
  with conv_impl("lax"), jax.default_matmul_precision("highest"):
    want = jax.jit(detector.apply)(variables, x)
    assert_close(jax.jit(plain_detector.apply)(plain_vars, x), want)


def test_docs_subtree_example_runs_and_holds_with_random_batchnorm():
  scope = docs_example("subtree example")
  detector, x = scope["detector"], scope["x"][:, :32, :32]
  variables = random_variables(detector, x, seed=4, zero_scale_fraction=0.05)
  for keep_bn in (False, True):
    plain, plain_vars = transforms.rm_convert_subtree(
      detector.backbone, variables, ("backbone",), features=True, keep_bn=keep_bn
    )
    assert set(plain_vars) == ({"params", "batch_stats"} if keep_bn else {"params"})
    with conv_impl("lax"), jax.default_matmul_precision("highest"):
      want = jax.jit(detector.apply)(variables, x)
      got = jax.jit(scope["Detector"](plain).apply)(plain_vars, x)
    assert_close(got, want)


def test_subtree_helpers():
  variables = {
    "params": {"backbone": {"a": 1}, "neck": {"b": 2}},
    "batch_stats": {"backbone": {"m": 3}},
  }
  assert transforms.subtree(variables, "backbone") == {"params": {"a": 1}, "batch_stats": {"m": 3}}
  assert transforms.replace_subtree(variables, "backbone", {"params": {"c": 4}}) == {
    "params": {"backbone": {"c": 4}, "neck": {"b": 2}}
  }
  nested = {"params": {"model": {"encoder": {"a": 1}, "x": 0}}}
  assert transforms.subtree(nested, "model/encoder") == {"params": {"a": 1}}
  assert transforms.replace_subtree(nested, ("model", "encoder"), {}) == {
    "params": {"model": {"x": 0}}
  }
  with pytest.raises(ValueError, match="no params under 'backbone'; the params hold"):
    transforms.rm_convert_subtree(models.create("resnet18"), {"params": {"neck": {}}}, "backbone")
  with pytest.raises(ValueError, match="one or more names"):
    transforms.subtree(variables, "")


def test_docs_nnx_example_runs_and_holds_with_random_batchnorm():
  scope = docs_example("nnx example")
  model, x = scope["model"], jnp.asarray(scope["x"][:, :32, :32])
  variables = random_variables(model, x, seed=5, zero_scale_fraction=0.05)
  backbone = nnx_bridge.to_nnx(model, variables)
  chex.assert_trees_all_equal(nnx_bridge.linen_variables(backbone), variables)  # a round trip
  detector = scope["Detector"](backbone, rngs=nnx.Rngs(1))
  forward = nnx.jit(lambda detector, x: detector(x))
  with conv_impl("lax"), jax.default_matmul_precision("highest"):
    want = forward(detector, x)
    detector.backbone = nnx_bridge.rm_convert(detector.backbone, features=True)
    assert isinstance(detector.backbone.to_nnx__module, PlainNet)
    assert_close(forward(detector, x), want)
  # The pure form: rm_convert on the variables NNX holds, then plain.apply.
  plain, plain_vars = transforms.rm_convert(
    model, nnx_bridge.linen_variables(backbone), features=True
  )
  assert plain == detector.backbone.to_nnx__module
  chex.assert_trees_all_equal(plain_vars, nnx_bridge.linen_variables(detector.backbone))


def test_nnx_training_mode_updates_the_wrapped_batch_statistics():
  """What docs/backbones.md tells NNX users who train: `mutable=["batch_stats"]`."""
  model = models.create("resnet18", stem="cifar", widths=(4, 4, 4, 4), stem_width=4)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  backbone = nnx_bridge.to_nnx(model, random_variables(model, x, seed=6))
  before = nnx_bridge.linen_variables(backbone)["batch_stats"]
  with conv_impl("lax"):
    backbone(x, train=True, features=True, mutable=["batch_stats"])
  after = nnx_bridge.linen_variables(backbone)["batch_stats"]
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
  assert all(jax.tree.leaves(moved))
  with pytest.raises(TypeError, match="nnx.bridge.ToNNX"):
    nnx_bridge.rm_convert(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
