"""TensorFlow's "SAME" padding, which depends on the input's size: the plain `Conv(padding=
"same")`, MobileNetV2's padding="keras" (and "keras_unsized"), where a Dirac kernel's centre tap
reads under it, and a keras-padded network through RM, structured execution, pruning and the
PyTorch twins at odd and even sizes, height and width apart. Against Keras itself:
tests/interop_keras_test.py."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import transforms
from rmjax.models import mobilenet
from rmjax.models import plain as plain_layers
from rmjax.models.plain import SAME, Conv, PlainNet
from rmjax.testing import eval_logits, random_variables
from rmjax.transforms.convert import emit_conv


def tensorflow_same(n: int, k: int, s: int) -> tuple[int, int]:
  # tf.nn.conv2d's documentation, written out independently of the code under test.
  total = max((math.ceil(n / s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


def test_same_pads_is_tensorflows_rule():
  for k in (1, 2, 3, 5, 7):
    for s in (1, 2, 3):
      conv = Conv(4, 4, k, s, padding="SAME")
      for n in range(1, 70):
        assert conv.pads_at(n) == tensorflow_same(n, k, s), (n, k, s)
  assert Conv(4, 4, 3, 2, padding="same").padding == SAME
  assert Conv(4, 4, 3, 2, padding=(0, 1)).pads_at(7) == (0, 1)  # fixed padding stays fixed
  with pytest.raises(ValueError, match="depends on the input size; use pads_at"):
    _ = Conv(4, 4, 3, 2, padding="same").pads
  with pytest.raises(ValueError, match="padding 'valid': expected"):
    Conv(4, 4, 3, padding="valid")


def test_keras_padding_is_same_where_same_depends_on_the_size():
  """Where "SAME" is the same at every size (stride 1, or a 1x1 kernel), MobileNetV2 and its
  plain network use that number, which keeps 1x1 convs fusable (Eq. 5)."""
  for k in (1, 3, 5):
    for s in (1, 2):
      pad = mobilenet.conv_padding(k, s, "keras")
      if pad == SAME:
        assert k > 1 and s > 1
        assert len({tensorflow_same(n, k, s) for n in range(8, 40)}) > 1
      else:
        for n in range(1, 40):
          assert Conv(4, 4, k, s, padding=pad).pads == tensorflow_same(n, k, s), (k, s, n)
  assert mobilenet.conv_padding(3, 2, "keras_unsized") == (0, 1)
  assert mobilenet.conv_padding(3, 2, "torch") == 1


def test_same_conv_pads_height_and_width_by_their_own_sizes():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 7, 8, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  variables = {"params": {"layers_0": {"kernel": kernel, "bias": jnp.zeros(4)}}}
  got = PlainNet((Conv(3, 4, 3, 2, padding="same"),)).apply(variables, x)
  # Height 7 (odd): (1, 1); width 8 (even): (0, 1).
  want = jax.lax.conv_general_dilated(
    x, kernel, (2, 2), ((1, 1), (0, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  assert got.shape == (2, 4, 4, 4)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=0)
  assert str(Conv(3, 4, 3, 2, padding="same")).endswith("stride=(2, 2), padding=same)")


def centre_tap_reads(stride: int, padding, n: int) -> np.ndarray:
  """Which input position each output of a Dirac (centre-tap) 3x3 conv copies, along an axis
  of n pixels (-1: the padding)."""
  x = jnp.arange(1.0, n + 1.0).reshape(1, n, 1, 1) * jnp.ones((1, 1, 5, 1))
  variables = {"params": {"layers_0": {"kernel": transforms.dirac_kernel(1, 3)}}}
  y = PlainNet((Conv(1, 1, 3, stride, padding, use_bias=False),)).apply(variables, x)
  return np.asarray(y[0, :, 0, 0]).astype(int) - 1


@pytest.mark.parametrize("n", [7, 8, 9, 10])
def test_the_centre_tap_of_a_strided_same_conv_moves_with_the_size(n):
  """Why RM may not put Dirac channels in a strided "same" conv: a strided 1x1 conv (what a
  reserved or merged shortcut stands for, Appendix A.1 (b)) reads 2i; the centre tap of a
  stride-2 3x3 conv reads 2i + 1 - low, which is 2i on odd sizes (padded (1, 1)) but 2i + 1 on
  even ones (padded (0, 1)). At stride 1 "same" pads (1, 1) and the tap reads i at every size."""
  out = -(-n // 2)
  strided_1x1 = 2 * np.arange(out)
  np.testing.assert_array_equal(centre_tap_reads(2, 1, n), strided_1x1)  # PyTorch's padding
  same = centre_tap_reads(2, "same", n)
  if n % 2:
    np.testing.assert_array_equal(same, strided_1x1)
  else:
    np.testing.assert_array_equal(same, strided_1x1 + 1)
  np.testing.assert_array_equal(centre_tap_reads(1, "same", n), np.arange(n))


def test_emit_conv_refuses_dirac_structure_in_a_strided_same_conv():
  layer = {"kernel": jnp.zeros((3, 3, 4, 8)), "bias": jnp.zeros(8)}
  for structure in ({"reserved": 4}, {"merged": 2}):
    with pytest.raises(ValueError, match="different input pixel on even and odd input sizes"):
      emit_conv(layer, stride=2, padding="same", **structure)
    # Stride 1, or a fixed padding: allowed.
    assert emit_conv(layer, stride=1, padding="same", **structure)
    assert emit_conv(layer, stride=2, padding=1, **structure)
  assert emit_conv(layer, stride=2, padding="same")[0].layer.padding == SAME


# --- a keras-padded MobileNetV2 through RM, structured execution, pruning, twins --------------

# Odd and even at each stride-2 conv, in either axis: 29 -> 15 -> 8 -> 4; 20 -> 10 -> 5 -> 3.
SHAPES = ((29, 20), (20, 29))


def small_mobilenet_model(padding: str) -> mobilenet.MobileNetV2:
  """A 5-block MobileNetV2: ImageNet stem, two stride-2 blocks, identity shortcuts at stride 1."""
  blocks = (
    mobilenet.BlockSpec(0, 8, 1),
    mobilenet.BlockSpec(24, 8, 2),
    mobilenet.BlockSpec(24, 8, 1),
    mobilenet.BlockSpec(24, 16, 2),
    mobilenet.BlockSpec(48, 16, 1),
  )
  return mobilenet.MobileNetV2(
    blocks, stem_features=16, last_features=32, num_classes=5, bn_epsilon=1e-3, padding=padding
  )


@functools.cache
def small_mobilenet():
  """`(model, variables, plain, plain_vars)`: the keras-padded one with random BN, converted by
  RM to the fine-tuning form (keep_bn)."""
  model = small_mobilenet_model("keras")
  x = jnp.zeros((1, *SHAPES[0], 3))
  variables = random_variables(model, x, seed=4)
  convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames="keep_bn")
  plain, plain_vars = convert(model, variables, keep_bn=True)
  return model, variables, plain, plain_vars


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((2, *shape, 3)), jnp.float32)


def assert_same_logits(got, want):
  scale = max(1.0, float(jnp.max(jnp.abs(want))))
  chex.assert_trees_all_close(got, want, atol=1e-4 * scale, rtol=0)
  assert float(jnp.max(jnp.abs(want))) > 0.1


def test_keras_padded_network_is_exact_at_odd_and_even_sizes_dense_and_structured():
  model, variables, plain, plain_vars = small_mobilenet()
  convs = [x for x in plain.layers if isinstance(x, Conv) and x.kernel_size == 3]
  assert {(c.stride, c.padding) for c in convs} == {(2, SAME), (1, 1)}
  assert not any(c.structured for c in convs if c.padding == SAME)
  assert any(c.structured for c in convs)
  for shape in SHAPES:
    x = images(shape)
    want = eval_logits(model, variables, x)
    assert_same_logits(eval_logits(plain, plain_vars, x), want)
  # One shape has odd and even sizes in each axis already.
  structured = functools.partial(plain.apply, structured=True)
  with jax.default_matmul_precision("highest"):
    assert_same_logits(jax.jit(structured)(plain_vars, x), want)
  # "keras_unsized" (Keras' MobileNetV2 built without a fixed size): only the stem is "same".
  unsized = small_mobilenet_model("keras_unsized")
  abstract = jax.eval_shape(functools.partial(unsized.init, train=False), jax.random.key(0), x)
  plain = jax.eval_shape(lambda v: transforms.rm_convert(unsized, v), abstract)[0]
  paddings = [x.padding for x in plain.layers if isinstance(x, Conv) and x.stride == 2]
  assert paddings == [SAME, (0, 1), (0, 1)]


def test_pruning_keeps_same_padding_and_exactness():
  """Channels silenced (BN scale and bias 0) before the stride-2 "same" depthwise convs are
  pruned through them; the pruned network, and its deploy form, equal the original."""
  _, _, plain, plain_vars = small_mobilenet()
  same = [i for i, x in enumerate(plain.layers) if isinstance(x, Conv) and x.padding == SAME]
  params = dict(plain_vars["params"])
  for i in same[1:]:  # the BN of the expanding conv that feeds each strided depthwise conv
    bn = dict(params[f"layers_{i - 2}"])
    bn["scale"], bn["bias"] = (bn[k].at[jnp.array([1, 5])].set(0.0) for k in ("scale", "bias"))
    params[f"layers_{i - 2}"] = bn
  zeroed = {**plain_vars, "params": params}
  pruned, pruned_vars, report = transforms.prune(plain, zeroed, threshold=1e-6)
  assert {e["layer"]: e["removed"] for e in report["layers"] if e["removed"]} == {
    i - 3: [1, 5] for i in same[1:]
  }
  assert [pruned.layers[i].padding for i in same] == [SAME] * len(same)
  assert pruned.layers[same[1]].groups == plain.layers[same[1]].groups - 2
  x = images(SHAPES[0], seed=1)
  want = eval_logits(plain, zeroed, x)
  assert_same_logits(eval_logits(pruned, pruned_vars, x), want)
  # Its deploy form (BN folded) keeps the padding too.
  deploy, deploy_vars = jax.jit(transforms.rm_convert, static_argnums=0)(pruned, pruned_vars)
  assert [x.padding for x in deploy.layers if isinstance(x, Conv) and x.stride == 2] == [SAME] * 3
  assert_same_logits(eval_logits(deploy, deploy_vars, x), want)


def test_pytorch_twins_pad_as_tensorflow_does():
  torch_twins = pytest.importorskip("rmjax.bench.torch_twins")
  pytest.importorskip("torch")
  model, variables, plain, plain_vars = small_mobilenet()
  x = images(SHAPES[0], seed=2)
  want = np.asarray(eval_logits(model, variables, x))
  for network, network_vars in ((model, variables), (plain, plain_vars)):
    module = torch_twins.twin_of(network, network_vars)
    assert_same_logits(jnp.asarray(torch_twins.logits(module, x)), jnp.asarray(want))


def test_onnx_export_pads_as_tensorflow_does(tmp_path):
  """`padding="same"` is ONNX's auto_pad SAME_UPPER; checked in ONNX Runtime at odd and even
  sizes (export_onnx refuses a model that differs)."""
  onnx = pytest.importorskip("onnx")
  pytest.importorskip("onnxruntime")
  from rmjax.deploy import onnx as onnx_export

  _, _, plain, plain_vars = small_mobilenet()
  for shape in SHAPES:
    path = str(tmp_path / f"{shape[0]}x{shape[1]}.onnx")
    check = onnx_export.export_onnx(plain, plain_vars, (*shape, 3), path)
    assert check["max_abs_diff"] <= 1e-4 * max(1.0, check["logit_scale"])
  convs = [n for n in onnx.load(path).graph.node if n.op_type == "Conv"]
  auto = [n for n in convs if any(a.name == "auto_pad" for a in n.attribute)]
  assert len(auto) == 3 and len(convs) > 3


def test_same_layer_in_the_layer_table():
  assert "padding=same" in str(PlainNet((plain_layers.Conv(3, 8, 3, 2, padding=SAME),)))
