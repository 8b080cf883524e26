"""ResNet models: shapes, torchvision parameter counts, train/eval behaviour, the registry."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import models
from rmjax.cost import count_params


@pytest.mark.parametrize(
  "name, expected",
  # torchvision's counts for 1000 classes (a fixed external reference for the torchvision layout).
  [
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
  ],
)
def test_parameter_counts_match_torchvision(name, expected):
  model = models.create(name, num_classes=1000, stem="imagenet")
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  assert count_params(variables["params"]) == expected
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert logits.shape == (1, 1000)


@pytest.mark.parametrize("stem, size, spatial", [("cifar", 32, 32), ("imagenet", 64, 16)])
def test_stem_output_size(stem, size, spatial):
  stem_module = models.Stem(16, stem)
  x = jnp.ones((2, size, size, 3))
  y, _ = stem_module.init_with_output(jax.random.key(0), x)
  assert y.shape == (2, spatial, spatial, 16)
  assert float(y.min()) >= 0.0  # ends in ReLU: the first block's input is non-negative


def test_torchvision_layout_names():
  model = models.create("resnet50", num_classes=10, stem="imagenet")
  x = jnp.zeros((1, 32, 32, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
  block = params["layer2_0"]
  assert set(block) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "proj_conv", "proj_bn"}
  # Stride sits on the 3x3 conv of the bottleneck; the projection is a 1x1 conv.
  assert block["conv1"]["kernel"].shape == (1, 1, 256, 128)
  assert block["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert block["proj_conv"]["kernel"].shape == (1, 1, 256, 512)
  assert "proj_conv" not in params["layer2_1"]


def test_train_mode_uses_batch_statistics_and_updates_them(resnet18_cifar):
  model, variables, x = resnet18_cifar
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (2, 10)
  old = variables["batch_stats"]["layer1_0"]["bn1"]["mean"]
  new = updates["batch_stats"]["layer1_0"]["bn1"]["mean"]
  assert not np.allclose(old, new)
  eval_logits = model.apply(variables, x, train=False)
  assert not np.allclose(logits, eval_logits)


def test_create_unknown_name_lists_known_names():
  with pytest.raises(ValueError, match="unknown model 'resnet19'") as e:
    models.create("resnet19")
  for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    assert name in str(e.value)


def test_create_bad_argument():
  with pytest.raises(ValueError, match="bad arguments for model 'resnet18'"):
    models.create("resnet18", depth=7)


def test_bad_stem_and_mismatched_stages_are_reported():
  with pytest.raises(ValueError, match="unknown stem 'vgg'"):
    models.create("resnet18", stem="vgg").layout()
  with pytest.raises(ValueError, match="must have the same length"):
    models.ResNet(stage_sizes=(1, 1), widths=(8,), strides=(1, 2)).layout()


@pytest.mark.parametrize(
  # He et al. 2016, Table 6 (their shortcuts add no parameters; ours add two 1x1 projections).
  "name, millions",
  [
    ("resnet20", 0.27),
    ("resnet32", 0.46),
    ("resnet44", 0.66),
    ("resnet56", 0.85),
    ("resnet110", 1.7),
  ],
)
def test_cifar_resnets_match_he_et_al(name, millions):
  model = models.create(name)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  assert abs(count_params(variables["params"]) / 1e6 - millions) / millions < 0.03
  widths = sorted({b.features for b in model.layout() if isinstance(b, models.BasicBlock)})
  assert widths == [16, 32, 64]


def test_importing_transforms_does_not_import_tensorflow():
  code = "import sys, rmjax.transforms, rmjax.models; assert 'tensorflow' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)
