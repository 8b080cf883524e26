"""RMNeXt (Sec. 5.4): exact conversion of every preset, Table 4's layers, Table 3's sizes."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import pytest

from rmjax import models, transforms
from rmjax.compare import conversion_sizes
from rmjax.models import plain as plain_layers
from rmjax.models.conv import conv_impl
from rmjax.models.rmnext import PRESETS
from rmjax.testing import eval_logits, random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The paper's Table 4 (RMNet 26x3_32 on CIFAR-10), as published: one row per Conv2d,
# (in, out, kernel, stride, padding, groups); every conv is followed by a ReLU.
TABLE_4 = [(3, 64, 3, 1, 1, 1)] + [
  row
  for stage in [
    [(64, 192, 1, 1, 0, 1), (192, 192, 3, 1, 1, 6), (192, 64, 1, 1, 0, 1)] * 2,
    [(64, 320, 1, 1, 0, 1), (320, 320, 3, 2, 1, 5), (320, 128, 1, 1, 0, 1)],
    [(128, 384, 1, 1, 0, 1), (384, 384, 3, 1, 1, 6), (384, 128, 1, 1, 0, 1)],
    [(128, 640, 1, 1, 0, 1), (640, 640, 3, 2, 1, 5), (640, 256, 1, 1, 0, 1)],
    [(256, 768, 1, 1, 0, 1), (768, 768, 3, 1, 1, 6), (768, 256, 1, 1, 0, 1)],
    [(256, 1280, 1, 1, 0, 1), (1280, 1280, 3, 2, 1, 5), (1280, 512, 1, 1, 0, 1)],
    [(512, 1536, 1, 1, 0, 1), (1536, 1536, 3, 1, 1, 6), (1536, 512, 1, 1, 0, 1)],
  ]
  for row in stage
]


def test_rmnext26_deploy_network_matches_table_4():
  model = models.create("rmnext26x3_32", num_classes=10, stem="cifar")
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  plain, _ = jax.eval_shape(lambda v: transforms.rm_convert(model, v), variables)
  layers = plain.layers
  convs = [
    (c.in_features, c.out_features, c.kernel_size, c.stride, c.padding, c.groups)
    for c in layers
    if isinstance(c, plain_layers.Conv)
  ]
  assert convs == TABLE_4
  # Conv, ReLU alternate (Table 4 rows 0-49), then pooling and the classifier (50-52).
  assert all(isinstance(layer, plain_layers.Conv) for layer in layers[0:50:2])
  assert all(isinstance(layer, plain_layers.ReLU) for layer in layers[1:50:2])
  assert layers[50:] == (plain_layers.GlobalAvgPool(), plain_layers.Dense(512, 10))


def damp_residual_branches(variables, factor=0.25):
  """Scales each block's last BN, as in trained networks: with 36 undamped random branches the
  activations of rmnext152 grow to logits ~1e3, where float32 round-off alone exceeds 1e-4."""
  params = dict(variables["params"])
  for name, block in params.items():
    if "bn3" in block:
      bn3 = {**block["bn3"], "scale": block["bn3"]["scale"] * factor}
      params[name] = {**block, "bn3": bn3}
  return {**variables, "params": params}


# The 101- and 152-layer presets repeat the 50-layer presets' blocks (same expansion, groups
# and widths, only more of them in stage 3/2): checked at depth [3, 4, 6, 3] to keep the suite
# fast (their full depth took ~50 s each). Their full sizes are checked against Table 3 below.
SHALLOWER = {"rmnext101x6_16": (3, 4, 6, 3), "rmnext152x6_32": (3, 4, 6, 3)}


@pytest.mark.parametrize("keep_bn", [False, True], ids=["deploy", "keep_bn"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_converts_exactly(name, keep_bn):
  depth = {"stage_sizes": SHALLOWER[name]} if name in SHALLOWER else {}
  model = models.create(name, num_classes=10, **depth)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  variables = damp_residual_branches(random_variables(model, x, seed=3, zero_scale_fraction=0.05))
  convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames="keep_bn")
  plain, plain_vars = convert(model, variables, keep_bn=keep_bn)
  # XLA's own grouped conv: RM's exactness does not depend on how a conv is computed (conv_test
  # checks every formulation against it), and at these tiny shapes the CPU formulations'
  # compile time dominates (rmnext41x4_8: 70 s split, 10 s lax). RMNeXt-26 runs on "auto" in
  # convert_test and structured_test.
  with conv_impl("lax"):
    want = eval_logits(model, variables, x)
    got = eval_logits(plain, plain_vars, x)
  chex.assert_trees_all_close(got, want, atol=1e-4, rtol=0)
  assert 0.1 < float(jnp.abs(want).max()) < 1e3


# Table 3 (ImageNet, 1000 classes, 224x224): params (M) and FLOPs (G) as published.
TABLE_3 = {
  "rmnext41x4_8": (11.2, 1.9),
  "rmnext41x5_16": (23.9, 3.79),
  "rmnext50x5_32": (39.6, 6.88),
  "rmnext50x6_32": (47.6, 8.26),
  "rmnext101x6_16": (59.45, 11.11),
  "rmnext152x6_32": (126.92, 25.32),
}


def sizes(name, num_classes=1000, size=224):
  """(params, MACs) of the residual model and of its deploy form."""
  return conversion_sizes(models.create(name, num_classes=num_classes), size)


@pytest.mark.parametrize(
  "name", ["rmnext41x5_16", "rmnext50x5_32", "rmnext50x6_32", "rmnext101x6_16", "rmnext152x6_32"]
)
def test_plain_sizes_match_table_3(name):
  # These rows of Table 3 count the deployed network (docs/rmnext.md).
  _, (params, macs) = sizes(name)
  paper_params, paper_flops = TABLE_3[name]
  assert abs(params / 1e6 - paper_params) / paper_params < 0.005
  assert abs(macs / 1e9 - paper_flops) / paper_flops < 0.005


def test_rmnext41x4_8_row_matches_the_residual_network():
  # The one ImageNet row that counts the network before conversion (docs/rmnext.md).
  (params, macs), (plain_params, _) = sizes("rmnext41x4_8")
  assert abs(params / 1e6 - 11.2) / 11.2 < 0.01
  assert abs(macs / 1e9 - 1.9) / 1.9 < 0.03
  assert plain_params / 1e6 > 14


def test_rmnext50_config_without_imagenet_says_how_to_prepare_it(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "train.py",
      "--config",
      "configs/rmnext50.py",
      f"--workdir={tmp_path}/w",
      f"--config.data_dir={tmp_path}/tfds",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode != 0
  assert f"{tmp_path}/tfds/downloads/manual/ILSVRC2012_img_train.tar" in result.stderr
  assert "Traceback" not in result.stderr
