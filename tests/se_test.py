"""SE-ResNets (Hu et al. 2018): exact RM across squeeze-and-excitation, and the plain
`SqueezeExcite` layer (gates its leading channels, passes the reserved ones untouched)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conversion_checks import assert_converts_exactly
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rmjax
from rmjax import models, plain_io, transforms
from rmjax.cost import count_macs, count_params
from rmjax.models import mobilenet
from rmjax.models.plain import PlainNet, SqueezeExcite

# Small widths (the presets' depths); SE reduction 4 so that the SE layers are 2+ units wide.
PRESETS = {
  "seresnet18": (dict(stem="cifar", widths=(8, 8, 16, 16), stem_width=8), 16),
  "seresnet34": (dict(stem="imagenet", widths=(8, 8, 16, 16), stem_width=8), 32),
  "seresnet50": (dict(stem="cifar", widths=(4, 4, 8, 8), stem_width=8), 16),
}


def preset(name):
  kwargs, size = PRESETS[name]
  model = models.create(name, num_classes=10, se_reduction=4, **kwargs)
  x = jax.random.uniform(jax.random.key(1), (2, size, size, 3))
  return model, x


@pytest.mark.parametrize("keep_bn", [False, True], ids=["deploy", "keep_bn"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_convert_exactly(name, keep_bn):
  model, x = preset(name)
  blocks = sum(model.stage_sizes)
  # Structured execution in one form: its compilation is the slowest part of the check.
  plain, _ = assert_converts_exactly(
    model, x, keep_bn=keep_bn, blocks=blocks, structured=not keep_bn
  )
  gates = [layer for layer in plain.layers if isinstance(layer, SqueezeExcite)]
  assert len(gates) == blocks
  # Every gate spares the block input reserved behind the branch's channels.
  assert all(g.features > g.channels for g in gates)


@pytest.mark.parametrize("keep_bn", [False, True], ids=["deploy", "keep_bn"])
def test_mobilenetv2_with_se_converts_exactly(keep_bn):
  # SE on the depthwise output (MobileNetV3's place): inside the branch, before the linear
  # project conv, so the gate alone (no extra conv) keeps the carried channels exact.
  # A few blocks of every kind: without expansion, carried shortcut, stride 2.
  specs = [(0, 8, 1), (24, 8, 1), (24, 16, 2), (48, 16, 1)]
  model = mobilenet.MobileNetV2(
    tuple(mobilenet.BlockSpec(*spec) for spec in specs),
    stem_features=16,
    last_features=32,
    num_classes=10,
    stem="cifar",
    se_ratio=0.25,
  )
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  blocks = [b for b in model.layout() if isinstance(b, mobilenet.InvertedResidual)]
  shortcuts = sum(1 for b in blocks if b.shortcut)
  plain, _ = assert_converts_exactly(
    model, x, keep_bn=keep_bn, blocks=shortcuts, structured=not keep_bn
  )
  gates = [layer for layer in plain.layers if isinstance(layer, SqueezeExcite)]
  assert [g.features - g.channels for g in gates] == [b.shortcut for b in blocks]


@st.composite
def small_se_resnets(draw):
  stages = draw(st.integers(1, 3))
  block = draw(st.sampled_from([models.SEBasicBlock, models.SEBottleneck]))
  max_width = 12 if block is models.SEBasicBlock else 6

  def per_stage(strategy):
    return tuple(draw(st.lists(strategy, min_size=stages, max_size=stages)))

  model = models.SEResNet(
    stage_sizes=per_stage(st.integers(1, 2)),
    block=block,
    widths=per_stage(st.integers(2, max_width)),
    strides=per_stage(st.sampled_from([1, 2])),
    stem=draw(st.sampled_from(["cifar", "imagenet"])),
    stem_width=draw(st.integers(2, 16)),
    num_classes=draw(st.integers(2, 7)),
    se_reduction=draw(st.integers(1, 8)),
    shortcut_bn=draw(st.booleans()),
  )
  size = draw(st.integers(5, 20))
  options = {"keep_bn": draw(st.booleans()), "dense_reserve": draw(st.booleans())}
  return model, (draw(st.integers(1, 3)), size, size, 3), options, draw(st.integers(0, 2**16))


@settings(
  max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(small_se_resnets())
def test_rm_convert_is_exact_for_random_se_resnets(example):
  model, shape, options, seed = example
  x = jax.random.normal(jax.random.key(seed), shape)  # signed: only block inputs must be >= 0
  blocks = sum(model.stage_sizes)
  assert_converts_exactly(model, x, blocks=blocks, seed=seed, structured=False, **options)


def test_squeeze_excite_gates_the_leading_channels_and_passes_the_rest():
  plain = PlainNet((SqueezeExcite(7, reduced=2, channels=4),))
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 7))
  variables = plain.init(jax.random.key(1), x)
  y = plain.apply(variables, x)
  np.testing.assert_array_equal(y[..., 4:], x[..., 4:])  # untouched, bit for bit
  p = variables["params"]["layers_0"]
  squeezed = jnp.mean(x[..., :4], axis=(1, 2))
  hidden = jax.nn.relu(squeezed @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  gate = jax.nn.sigmoid(hidden @ p["fc2"]["kernel"] + p["fc2"]["bias"])
  chex.assert_trees_all_close(y[..., :4], x[..., :4] * gate[:, None, None], atol=1e-6)
  # The passed-through channels do not reach the gate.
  shifted = plain.apply(variables, x.at[..., 4:].add(10.0))
  np.testing.assert_array_equal(shifted[..., :4], y[..., :4])
  # The cost counters see its two dense layers (batch x (4 x 2 + 2 x 4) multiply-adds).
  assert count_macs(plain.apply, variables, x) == 2 * (4 * 2 + 2 * 4)
  with pytest.raises(ValueError, match="squeeze-and-excitation of 9 channels"):
    PlainNet((SqueezeExcite(7, reduced=2, channels=9),)).init(jax.random.key(1), x)


def test_se_adds_two_dense_layers_per_block():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)

  def params(name):
    model = models.create(name, num_classes=10, stem="cifar")
    return model, jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]

  for se_name, name in (("seresnet18", "resnet18"), ("seresnet50", "resnet50")):
    se_model, se_params = params(se_name)
    added = 0
    for block in se_model.layout()[1:-1]:
      c, r = block.out_features, block.out_features // 16
      added += 2 * c * r + r + c  # fc1 and fc2, kernels and biases (Hu et al., Eq. 3)
    assert count_params(se_params) - count_params(params(name)[1]) == added


def test_plain_json_round_trip_with_squeeze_excite(tmp_path):
  model, x = preset("seresnet18")
  plain, plain_vars = assert_converts_exactly(model, x, keep_bn=False, blocks=8, structured=False)
  assert "SqueezeExcite(16, reduced=2, channels=8)" in str(plain)
  assert plain_io.layers_from_json(plain_io.layers_to_json(plain.layers)) == plain.layers
  rmjax.save_plain(str(tmp_path / "plain"), plain, plain_vars, input_shape=x.shape[1:])
  loaded, loaded_vars = rmjax.load_plain(str(tmp_path / "plain"))
  assert loaded == plain
  chex.assert_trees_all_equal(loaded_vars, jax.device_get(plain_vars))
  np.testing.assert_array_equal(loaded.apply(loaded_vars, x), plain.apply(plain_vars, x))


def test_prune_leaves_the_convs_that_feed_a_squeeze_excite():
  model, x = preset("seresnet18")
  # Dense carried copies: grouped convs are skipped for their groups before this matters.
  plain, plain_vars = assert_converts_exactly(
    model, x, keep_bn=True, blocks=8, structured=False, dense_reserve=True
  )
  pruned, pruned_vars, report = transforms.prune(plain, plain_vars, threshold=0.0)
  feeding = [s for s in report["skipped"] if "squeeze-and-excitation" in s["reason"]]
  gates = [i for i, layer in enumerate(plain.layers) if isinstance(layer, SqueezeExcite)]
  # The BN'd conv right before each gate.
  assert sorted(s["layer"] for s in feeding) == [i - 2 for i in gates]
  assert pruned == plain
  np.testing.assert_array_equal(pruned.apply(pruned_vars, x), plain.apply(plain_vars, x))
