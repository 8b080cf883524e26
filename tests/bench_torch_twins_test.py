"""rmjax.bench.torch_twins: a PyTorch twin computes its rmjax network's logits from the same
weights.

Small widths and 16x16 images (32x32 where a stem downsamples 32x), random variables with
non-trivial BN statistics; tolerance 1e-4 of max(1, max |logit|).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rmjax import models  # noqa: E402
from rmjax.bench import suites, torch_twins  # noqa: E402
from rmjax.models import mobilenet, plain, repvgg  # noqa: E402
from rmjax.testing import eval_logits, random_variables  # noqa: E402


def _plain_layers():
  # Every layer kind, asymmetric ("SAME") padding, a depthwise conv, a clipped PReLU, SE on
  # the leading channels.
  return plain.PlainNet(
    (
      plain.Conv(3, 8, 3, stride=2, padding=(0, 1)),
      plain.BatchNorm(8, epsilon=1e-3),
      plain.PReLU(8, max_value=6.0, clipped=3),
      plain.Conv(8, 8, 3, padding=1, groups=8, use_bias=False),
      plain.ReLU(max_value=6.0),
      plain.MaxPool(),
      plain.Conv(8, 16, 1),
      plain.SqueezeExcite(16, reduced=3, channels=10),
      plain.ReLU(),
      plain.GlobalAvgPool(),
      plain.Dense(16, 10),
    )
  )


MODELS = {
  "resnet18-cifar": lambda: models.create(
    "resnet18", num_classes=10, stem="cifar", widths=(8, 8, 16, 16), stem_width=8
  ),
  "resnet34-imagenet-stem": lambda: models.create(
    "resnet34", num_classes=10, stem="imagenet", widths=(8, 8, 16, 16), stem_width=8
  ),
  "resnet50-shortcut-bn": lambda: models.create(
    "resnet50", num_classes=10, stem="cifar", widths=(4, 8, 8, 8), stem_width=8, shortcut_bn=True
  ),
  "seresnet18-cifar": lambda: models.create(
    "seresnet18", num_classes=10, stem="cifar", widths=(8, 8, 16, 16), stem_width=8, se_reduction=4
  ),
  "seresnet50-imagenet-stem": lambda: models.create(
    "seresnet50", num_classes=10, stem="imagenet", widths=(4, 8, 8, 8), stem_width=8
  ),
  "preactresnet18-cifar": lambda: models.create(
    "preactresnet18", num_classes=10, stem="cifar", widths=(8, 8, 16, 16), stem_width=8
  ),
  "preactresnet50-imagenet-stem": lambda: models.create(
    "preactresnet50", num_classes=10, stem="imagenet", widths=(4, 8, 8, 8), stem_width=8
  ),
  "mobilenetv2-to-v1": lambda: models.create(
    "mobilenetv2_to_v1", num_classes=10, stem="cifar", width=0.25
  ),
  "mobilenetv2-keras": lambda: mobilenet.mobilenetv2(
    width=0.35, num_classes=10, stem="cifar", bn_epsilon=1e-3, padding="keras"
  ),
  "mobilenetv2-se": lambda: mobilenet.mobilenetv2(
    width=0.35, num_classes=10, stem="cifar", se_ratio=0.25
  ),
  "mobilenetv1": lambda: mobilenet.MobileNetV1(width=0.25, num_classes=10, stem="cifar"),
  "rmnext26x3-cifar": lambda: models.create(
    "rmnext26x3_32",
    num_classes=10,
    stem="cifar",
    widths=(16, 16, 32, 32),
    stem_width=16,
    channels_per_group=8,
  ),
  "rmnext-imagenet-stem": lambda: models.create(
    "rmnext26x3_32",
    num_classes=10,
    stem="imagenet",
    stage_sizes=(1, 1),
    widths=(16, 32),
    stem_width=8,
    strides=(1, 2),
    channels_per_group=8,
  ),
  "repvgg-reserving-grouped": lambda: repvgg.RepVGG(
    stage_sizes=(1, 3, 2),
    widths=(8, 16, 16),
    stem_width=8,
    stem="cifar",
    num_classes=10,
    groups=2,
    grouped_layers=(2, 3, 4),
    reserve_ratio=0.25,
  ),
  "plain-layers": _plain_layers,
}
SIZES = {
  "resnet34-imagenet-stem": 32,
  "rmnext-imagenet-stem": 32,
  "seresnet50-imagenet-stem": 32,
  "preactresnet50-imagenet-stem": 32,
}


def _images(size: int, batch: int = 2):
  return np.asarray(jax.random.uniform(jax.random.key(1), (batch, size, size, 3), jnp.float32))


def _assert_same_logits(got, want):
  scale = max(1.0, float(np.max(np.abs(want))))
  np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0)


@functools.cache
def _model(name):
  model = MODELS[name]()
  x = _images(SIZES.get(name, 16))
  return model, random_variables(model, jnp.asarray(x), seed=3), x


@pytest.mark.parametrize("name", MODELS)
def test_twin_computes_the_same_logits(name):
  model, variables, x = _model(name)
  assert torch_twins.supports(model)
  module = torch_twins.twin_of(model, variables)
  assert not module.training
  _assert_same_logits(torch_twins.logits(module, x), np.asarray(eval_logits(model, variables, x)))


# (Not MobileNet at 16x16: its last BNs would normalise 2 values per channel, ill-conditioned.)
@pytest.mark.parametrize("name", ["resnet18-cifar", "repvgg-reserving-grouped"])
def test_twin_in_training_mode_normalises_by_batch_statistics(name):
  model, variables, x = _model(name)
  apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  with jax.default_matmul_precision("highest"):
    want, _ = jax.jit(apply)(variables, x)
  module = torch_twins.twin_of(model, variables).train()
  with torch.no_grad():
    got = module(torch_twins.to_nchw(x)).numpy()
  _assert_same_logits(got, np.asarray(want))


def test_tiny_suite_networks_and_their_twins():
  # The benchmark's networks: a plain one's twin (in any mode) is that of its dense form.
  nets = suites.build(["tiny"], suites.Settings(image_size=16))
  assert [n.mode for n in nets] == ["", "dense", "structured"]
  x = _images(16, batch=3)
  for net in nets:
    want = np.asarray(jax.jit(net.apply)(net.variables, x))
    _assert_same_logits(torch_twins.logits(torch_twins.twin(net), x), want)


def test_twin_names_its_modules_as_the_flax_variables():
  model, variables, _ = _model("resnet18-cifar")
  names = set(torch_twins.twin_of(model, variables).state_dict())
  assert {"stem.conv.weight", "layer2_0.proj_conv.weight", "head.fc.bias"} <= names
  assert "layer1_0.bn1.running_var" in names


def test_variables_that_do_not_fit_are_all_named():
  model, variables, _ = _model("resnet18-cifar")
  params = jax.tree.map(lambda a: a, variables["params"])  # a copy of the dict structure
  del params["layer1_0"]["conv1"]
  params["head"]["fc"]["kernel"] = jnp.zeros((3, 10))
  with pytest.raises(ValueError) as e:
    torch_twins.twin_of(model, {**variables, "params": params})
  message = str(e.value)
  assert "layer1_0.conv1.weight: no variable for it" in message
  assert "head.fc.weight: shape (10, 16), variables give (10, 3)" in message


def test_unsupported_models_are_refused():
  import flax.linen as nn

  assert not torch_twins.supports(nn.Dense(3))
  with pytest.raises(TypeError, match="no PyTorch twin for Dense"):
    torch_twins.architecture(nn.Dense(3))
  net = suites.Network("n", "g", "baseline", lambda v, x: x, {}, 16)
  with pytest.raises(TypeError, match="has no model"):
    torch_twins.twin(net)


def test_bfloat16_variables_give_a_bfloat16_twin():
  model, variables, x = _model("plain-layers")
  module = torch_twins.twin_of(model, suites.cast(variables, "bfloat16"))
  assert next(module.parameters()).dtype == torch.bfloat16
  got = torch_twins.logits(module, x)
  want = np.asarray(eval_logits(model, variables, x))
  np.testing.assert_allclose(got, want, atol=0.05 * max(1.0, float(np.max(np.abs(want)))))
