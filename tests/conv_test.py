"""Every conv implementation equals lax.conv_general_dilated, in value and in gradients; the
dispatch table, its overrides, and the Flax module's drop-in compatibility with nn.Conv."""

import chex
import flax.linen as nn
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings

from rmjax.models import conv
from rmjax.models.conv_impls import lax_conv


def _all_impls(x_shape, k_shape, groups) -> list[str]:
  return [i for i in conv.IMPLS if conv.applies(i, k_shape, groups, x_shape[-1])]


@jax.jit(static_argnames=("strides", "pads", "groups", "impls"))
def _outputs_and_grads(x, kernel, dy, *, strides, pads, groups, impls):
  """`{impl: (y, dx, dkernel)}` for lax and each of `impls`, all in one compiled function."""
  out = {}
  for impl in ("reference", *impls):
    if impl == "reference":

      def f(x, k):
        return lax_conv(x, k, strides, pads, groups)
    else:

      def f(x, k, impl=impl):
        return conv.conv2d(x, k, strides=strides, padding=pads, groups=groups, impl=impl)

    y, vjp = jax.vjp(f, x, kernel)
    out[impl] = (y, *vjp(dy))
  return out


def check_equal(x_shape, k_shape, strides, pads, groups, impls=None, seed=0):
  """Asserts that `impls` (default: every one that applies) match lax to float32 round-off."""
  # NumPy data and checks: an eager jnp op would compile once per new shape, and most of the
  # time would go there.
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(x_shape, np.float32)
  fan_in = k_shape[0] * k_shape[1] * k_shape[2]
  kernel = (rng.standard_normal(k_shape) / np.sqrt(fan_in)).astype(np.float32)
  y_shape = jax.eval_shape(lambda x, k: lax_conv(x, k, strides, pads, groups), x, kernel).shape
  dy = rng.standard_normal(y_shape, np.float32)
  impls = tuple(impls or _all_impls(x_shape, k_shape, groups))
  with jax.default_matmul_precision("highest"):
    out = _outputs_and_grads(x, kernel, dy, strides=strides, pads=pads, groups=groups, impls=impls)
  out = jax.device_get(out)
  want = out.pop("reference")
  for impl, got in out.items():
    for name, a, b in zip(("y", "dx", "dkernel"), got, want, strict=True):
      scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
      message = f"{impl} {name}"
      chex.assert_trees_all_close(a, b, atol=3e-6 * scale, rtol=1e-5, custom_message=message)


@st.composite
def conv_layers(draw):
  """A random NHWC conv: batch, spatial size, kernel 1/3/5/7, stride, (low, high) padding per
  axis, and groups: dense, depthwise (with a channel multiplier), or grouped."""
  kind = draw(st.sampled_from(["dense", "depthwise", "grouped"]))
  if kind == "dense":
    groups, cin, cout = 1, draw(st.integers(1, 6)), draw(st.integers(1, 6))
  elif kind == "depthwise":
    groups = cin = draw(st.integers(2, 6))
    cout = cin * draw(st.integers(1, 2))
  else:
    groups = draw(st.integers(2, 3))
    cin, cout = groups * draw(st.integers(2, 3)), groups * draw(st.integers(1, 3))
  kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (5, 5), (7, 7), (3, 1), (1, 3)]))
  pads = tuple(tuple(draw(st.integers(0, 3)) for _ in range(2)) for _ in range(2))
  h = draw(st.integers(max(1, kh - sum(pads[0])), 9))
  w = draw(st.integers(max(1, kw - sum(pads[1])), 9))
  strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
  batch = draw(st.integers(1, 3))
  return (batch, h, w, cin), (kh, kw, cin // groups, cout), strides, pads, groups


@settings(max_examples=30, deadline=None)
@given(conv_layers(), st.data())
def test_every_impl_equals_lax(layer, data):
  # One implementation per example keeps it to one small compile (this file runs in ~1 min).
  x_shape, k_shape, _, _, groups = layer
  impl = data.draw(st.sampled_from([i for i in _all_impls(x_shape, k_shape, groups) if i != "lax"]))
  check_equal(*layer, impls=(impl,), seed=data.draw(st.integers(0, 2**16)))


@pytest.mark.parametrize(
  "x_shape, k_shape, strides, pads, groups",
  [
    # ResNet stem (ImageNet): 7x7 stride 2, padding 3.
    ((2, 16, 16, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), 1),
    # ResNet 3x3 stride 2 and its 1x1 stride-2 projection.
    ((2, 8, 8, 16), (3, 3, 16, 32), (2, 2), ((1, 1), (1, 1)), 1),
    ((2, 8, 8, 16), (1, 1, 16, 32), (2, 2), ((0, 0), (0, 0)), 1),
    # MobileNetV2 depthwise, torch padding and Keras "SAME" (0, 1) before a stride 2.
    ((2, 8, 8, 32), (3, 3, 1, 32), (1, 1), ((1, 1), (1, 1)), 32),
    ((2, 8, 8, 32), (3, 3, 1, 32), (2, 2), ((0, 1), (0, 1)), 32),
    # RMNeXt: 32 channels per group, stride 1 and 2.
    ((2, 8, 8, 128), (3, 3, 32, 128), (1, 1), ((1, 1), (1, 1)), 4),
    ((2, 8, 8, 128), (3, 3, 32, 128), (2, 2), ((1, 1), (1, 1)), 4),
    # RepVGG g4 1x1 branch.
    ((2, 8, 8, 64), (1, 1, 16, 64), (1, 1), ((0, 0), (0, 0)), 4),
  ],
)
def test_model_shapes(x_shape, k_shape, strides, pads, groups):
  check_equal(x_shape, k_shape, strides, pads, groups)


def test_choose_cpu_table_and_gpu():
  pads = ((1, 1), (1, 1))
  assert conv.choose("gpu", (8, 32, 32, 64), (3, 3, 1, 64), (1, 1), pads, 64) == "lax"
  assert conv.choose("cpu", (8, 32, 32, 64), (3, 3, 1, 64), (1, 1), pads, 64) == "shifted"
  assert conv.choose("cpu", (8, 32, 32, 128), (3, 3, 32, 128), (1, 1), pads, 4) == "split"
  # Many groups: one einsum per tap keeps the program (and compile time) small.
  many = conv.SPLIT_MAX_GROUPS * 2
  assert conv.choose("cpu", (8, 8, 8, 4 * many), (3, 3, 4, 4 * many), (1, 1), pads, many) == (
    "grouped"
  )
  one_by_one = ((8, 32, 32, 64), (1, 1, 64, 128), (2, 2), pads, 1)
  dense = ((8, 16, 16, 128), (3, 3, 128, 128), (1, 1), pads, 1)
  small = ((8, 32, 32, 16), (3, 3, 16, 16), (1, 1), pads, 1)
  # XLA's default: 1x1 as a dot, dense 3x3 with a per-tap weight gradient where channels are many.
  assert conv.choose("cpu", *one_by_one, ynn=False) == "matmul"
  assert conv.choose("cpu", *dense, ynn=False) == "wgrad"
  assert conv.choose("cpu", *small, ynn=False) == "lax"
  # YNNPACK's dense conv (rmjax's default flags) beats the per-tap dots; its 1x1 weight gradient
  # does not.
  assert conv.choose("cpu", *one_by_one, ynn=True) == "wgrad"
  assert conv.choose("cpu", *dense, ynn=True) == "lax"
  # Grouped and depthwise convs are chosen the same either way.
  depthwise = ((8, 32, 32, 64), (3, 3, 1, 64), (1, 1), pads, 64)
  for ynn in (False, True):
    assert conv.choose("cpu", *depthwise, ynn=ynn) == "shifted"


def test_override_context_and_env(monkeypatch):
  x_shape, k_shape, pads = (2, 8, 8, 4), (3, 3, 1, 4), ((1, 1), (1, 1))
  args = (x_shape, k_shape, (1, 1), pads, 4)
  assert conv.resolve("auto", *args, backend="cpu") == "shifted"
  with conv.conv_impl("lax"):
    assert conv.resolve("auto", *args, backend="cpu") == "lax"
    assert conv.resolve("grouped", *args, backend="cpu") == "grouped"  # explicit wins
  monkeypatch.setenv(conv.ENV_VAR, "grouped")
  assert conv.resolve("auto", *args, backend="cpu") == "grouped"
  with conv.conv_impl("lax"):  # the context manager takes precedence over the environment
    assert conv.resolve("auto", *args, backend="cpu") == "lax"
  monkeypatch.setenv(conv.ENV_VAR, "matmul")  # does not apply to 3x3: the table decides
  assert conv.resolve("auto", *args, backend="cpu") == "shifted"
  monkeypatch.setenv(conv.ENV_VAR, "nonsense")
  with pytest.raises(ValueError, match="RMJAX_CONV_IMPL"):
    conv.resolve("auto", *args, backend="cpu")
  with pytest.raises(ValueError, match="unknown conv impl"):
    conv.conv_impl("nonsense").__enter__()
  with pytest.raises(ValueError, match="cannot compute"):
    conv.resolve("shifted", x_shape, (3, 3, 4, 4), (1, 1), pads, 1)


def test_override_is_read_at_trace_time():
  x, k = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 1, 4))

  def primitives():
    # A fresh function each time: a traced one keeps the choice it was traced with.
    fn = jax.jit(lambda x, k: conv.conv2d(x, k, padding=1, groups=4))
    return {e.primitive.name for e in jax.make_jaxpr(fn)(x, k).jaxpr.eqns[0].params["jaxpr"].eqns}

  with conv.conv_impl("lax"):
    assert "conv_general_dilated" in primitives()
  with conv.conv_impl("shifted"):
    assert "conv_general_dilated" not in primitives()


@pytest.mark.parametrize(
  "padding, want",
  [
    (1, ((1, 1), (1, 1))),
    (((0, 1), (0, 1)), ((0, 1), (0, 1))),
    ((2, 1), ((2, 2), (1, 1))),  # nn.Conv's rule: an int per axis pads both its sides
    ("SAME", ((0, 1), (0, 1))),  # 3x3 stride 2 on an even size: TensorFlow's "SAME"
    ("VALID", ((0, 0), (0, 0))),
  ],
)
def test_normalize_padding(padding, want):
  assert conv.normalize_padding(padding, (8, 8), (3, 3), (2, 2)) == want


_NN_CONV_CASES = [
  dict(features=8, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False),
  dict(features=8, kernel_size=(3, 3), strides=(2, 2), padding="SAME"),
  dict(features=12, kernel_size=(3, 3), padding=1, feature_group_count=4),
  dict(features=4, kernel_size=(1, 1), strides=2, feature_group_count=4, padding=0),
  dict(
    features=8,
    kernel_size=(3, 3),
    padding=((0, 1), (0, 1)),
    strides=(2, 2),
    kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
  ),
]


class ModuleTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*range(len(_NN_CONV_CASES)))
  def test_drop_in_for_nn_conv(self, case):
    kwargs = _NN_CONV_CASES[case]
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    ours, theirs = conv.Conv(**kwargs), nn.Conv(**kwargs)
    v_ours, v_theirs = ours.init(jax.random.key(1), x), theirs.init(jax.random.key(1), x)
    # Same tree, shapes and initial values: checkpoints and converters see no difference.
    chex.assert_trees_all_equal(v_ours, v_theirs)
    variables = jax.tree.map(lambda a: a + 0.5, v_ours)  # a non-zero bias
    with jax.default_matmul_precision("highest"):
      got = self.variant(ours.apply)(variables, x)
      want = theirs.apply(variables, x)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_empty_output_is_computed_like_lax():
  # A 1x1 input, 3x3 kernel, stride 2, Keras padding (0, 1): (1 + 1 - 3) // 2 + 1 = 0 rows.
  x, k = jnp.ones((2, 1, 1, 4)), jnp.ones((3, 3, 1, 4))
  for impl in ("auto", "shifted"):
    y = conv.conv2d(x, k, strides=2, padding=((0, 1), (0, 1)), groups=4, impl=impl)
    assert y.shape == lax_conv(x, k, (2, 2), ((0, 1), (0, 1)), 4).shape
