"""Structured execution of plain networks (rmjax.models.structured): the same function as the
dense form, the Dirac record the converters write, and its life in plain.json."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmjax
from rmjax import models, plain_io, transforms
from rmjax.cost import count_macs
from rmjax.models import plain as plain_layers
from rmjax.models import structured as structured_lib
from rmjax.models.structured import check_structure
from rmjax.testing import random_variables


@functools.cache
def converted(name: str, keep_bn: bool, fuse: bool = True, dense_reserve: bool = False):
  """A plain network converted from `name` with random, non-trivial BN statistics (and some
  exact-zero scales), and a batch of inputs."""
  factories = {
    # Basic blocks, identity and downsample (A.1 (b)); CIFAR stem.
    "resnet18": lambda: models.create("resnet18", num_classes=10, stem="cifar"),
    # Bottlenecks, identity and projection, with the ImageNet stem's max-pool; small widths.
    "bottleneck": lambda: models.ResNet(
      stage_sizes=(2, 1),
      widths=(8, 16),
      strides=(1, 2),
      stem_width=16,
      block=models.Bottleneck,
      stem="imagenet",
      num_classes=10,
    ),
    # A BN on each identity shortcut: the reserved copies carry per-channel gains.
    "shortcut_bn": lambda: models.ResNet(
      stage_sizes=(2, 1),
      widths=(8, 16),
      strides=(1, 2),
      stem_width=8,
      stem="cifar",
      num_classes=10,
      shortcut_bn=True,
    ),
    "mobilenet": lambda: models.create(
      "mobilenetv2_to_v1", width=0.25, num_classes=10, stem="cifar", activation="relu6"
    ),
    "rmnext26": lambda: models.create("rmnext26x3_32", num_classes=10, stem="cifar"),
  }
  model = factories[name]()
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), jnp.float32)
  variables = random_variables(model, x, seed=2, zero_scale_fraction=0.05)
  convert = jax.jit(
    transforms.rm_convert, static_argnums=0, static_argnames=("keep_bn", "fuse", "dense_reserve")
  )
  plain, plain_vars = convert(
    model, variables, keep_bn=keep_bn, fuse=fuse, dense_reserve=dense_reserve
  )
  return plain, plain_vars, x


def dense_and_structured(plain, plain_vars, x):
  with jax.default_matmul_precision("highest"):
    dense = jax.jit(functools.partial(plain.apply, structured=False))(plain_vars, x)
    structured = jax.jit(functools.partial(plain.apply, structured=True))(plain_vars, x)
  return dense, structured


# Every conversion in both forms would take minutes of compilation on 2 cores; each structure
# is covered in at least one form, and both forms for basic blocks and bottlenecks.
CASES = [
  ("resnet18", {}, False),
  ("resnet18", {}, True),
  ("bottleneck", {}, False),
  ("bottleneck", {}, True),
  ("bottleneck", {"dense_reserve": True}, False),  # carried block-diagonally, groups=1
  ("shortcut_bn", {}, True),
  ("mobilenet", {}, False),  # RM + fuse: MobileNetV1; only the depthwise convs keep structure
  ("mobilenet", {"fuse": False}, True),  # PReLU (ReLU6) channels, negative values carried
  ("rmnext26", {}, False),
]


@pytest.mark.parametrize(
  "name,kwargs,keep_bn",
  CASES,
  ids=[f"{n}{''.join(k)}-{'keep_bn' if b else 'deploy'}" for n, k, b in CASES],
)
def test_structured_equals_dense(name, kwargs, keep_bn):
  plain, plain_vars, x = converted(name, keep_bn, **kwargs)
  assert any(isinstance(layer, plain_layers.Conv) and layer.structured for layer in plain.layers)
  assert check_structure(plain, plain_vars) == []
  dense, structured = dense_and_structured(plain, plain_vars, x)
  assert float(jnp.abs(dense).max()) > 0.1
  # Float32 round-off: the learned part of each conv sums the same products without the zeros.
  chex.assert_trees_all_close(structured, dense, atol=1e-5, rtol=1e-5)


def test_structured_skips_the_zeros():
  plain, plain_vars, x = converted("resnet18", False)
  macs = rmjax.cost.count_macs
  dense = macs(functools.partial(plain.apply, structured=False), plain_vars, x)
  structured = macs(functools.partial(plain.apply, structured=True), plain_vars, x)
  model = models.create("resnet18", num_classes=10, stem="cifar")
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  residual = macs(functools.partial(model.apply, train=False), variables, x)
  assert structured == residual < dense  # RM's extra multiply-adds are all Dirac zeros


def test_copies_and_adds_follow_stride_and_padding():
  """A reserving and a merging conv at strides 1 and 2 with symmetric and asymmetric padding,
  and TensorFlow's "same" (on 7 x 8 inputs: (1, 1) in height, (0, 1) in width at stride 2): the
  centre tap's input position moves with the low padding."""
  rng = np.random.default_rng(0)
  c, m = 3, 5
  conv = {"kernel": jnp.asarray(rng.standard_normal((3, 3, c, m)), jnp.float32)}
  conv["bias"] = jnp.asarray(rng.standard_normal(m), jnp.float32)
  reserving = transforms.reserve(conv)
  shortcut = jnp.asarray(rng.standard_normal((1, 1, c, m)), jnp.float32)
  merging = transforms.merge(conv, shortcut, jnp.zeros(m))
  x = jax.random.normal(jax.random.key(0), (2, 7, 8, 2 * c))
  cases = []
  for stride in (1, 2):
    for padding in (1, (0, 1), (1, 0), "same"):
      cases.append((plain_layers.Conv(c, m + c, 3, stride, padding, reserved=c), reserving, c))
      cases.append((plain_layers.Conv(2 * c, m, 3, stride, padding, merged=c), merging, 2 * c))

  def both(x):
    out = []
    for spec, layer, width in cases:
      plain, variables = plain_layers.PlainNet((spec,)), {"params": {"layers_0": layer}}
      h = x[..., :width]
      dense = plain.apply(variables, h, structured=False)
      out.append((dense, plain.apply(variables, h, structured=True)))
    return out

  with jax.default_matmul_precision("highest"):
    for (spec, _, _), (dense, structured) in zip(cases, jax.jit(both)(x), strict=True):
      chex.assert_trees_all_close(structured, dense, atol=1e-5, rtol=1e-5, custom_message=str(spec))


def test_check_structure_finds_filled_in_zeros():
  plain, plain_vars, x = converted("resnet18", False)
  i = next(i for i, layer in enumerate(plain.layers) if getattr(layer, "reserved", 0))
  kernel = plain_vars["params"][f"layers_{i}"]["kernel"]
  # A corner tap of a copied channel: what fine-tuning would make non-zero.
  params = {**plain_vars["params"], f"layers_{i}": {**plain_vars["params"][f"layers_{i}"]}}
  params[f"layers_{i}"]["kernel"] = kernel.at[0, 0, 0, -1].set(0.5)
  tuned = {**plain_vars, "params": params}
  problems = check_structure(plain, tuned)
  assert len(problems) == 1 and problems[0].startswith(f"layers_{i} ")
  dense, structured = dense_and_structured(plain, tuned, x)
  assert float(jnp.abs(dense - structured).max()) > 1e-3


def test_a_plain_network_given_to_rm_convert_forgets_its_structure():
  # rm_convert of a PlainNet serves fine-tuned and pruned networks, whose zeros are gone.
  plain, plain_vars, _ = converted("shortcut_bn", True)
  again, _ = transforms.rm_convert(plain, plain_vars)
  assert not any(getattr(layer, "structured", False) for layer in again.layers)


def test_same_variables_in_both_modes():
  plain, plain_vars, x = converted("bottleneck", False)
  init = functools.partial(plain.init, jax.random.key(0), x)
  shapes = jax.tree.map(jnp.shape, jax.eval_shape(init))
  assert jax.tree.map(jnp.shape, jax.eval_shape(lambda: init(structured=True))) == shapes
  assert jax.tree.map(jnp.shape, plain_vars) == shapes


def test_plain_json_keeps_the_structure_and_old_files_load(tmp_path):
  plain, plain_vars, x = converted("bottleneck", True)
  entries = json.loads(json.dumps(plain_io.layers_to_json(plain.layers)))
  assert plain_io.layers_from_json(entries) == plain.layers
  # A plain.json written before the record existed has no such keys: dense, as it was.
  structure = ("reserved", "carried", "merged", "merged_identity")
  old = [{k: v for k, v in e.items() if e["type"] != "Conv" or k not in structure} for e in entries]
  loaded = plain_io.layers_from_json(old)
  assert loaded == tuple(
    layer.unstructured() if isinstance(layer, plain_layers.Conv) else layer
    for layer in plain.layers
  )
  # Through a PLAIN directory, then run structured.
  rmjax.save_plain(str(tmp_path / "plain"), plain, plain_vars, input_shape=x.shape[1:])
  loaded_plain, loaded_vars = rmjax.load_plain(str(tmp_path / "plain"))
  assert loaded_plain == plain
  dense, structured = dense_and_structured(loaded_plain, loaded_vars, x)
  chex.assert_trees_all_close(structured, dense, atol=1e-5, rtol=1e-5)


def test_saving_counts_the_skipped_multiply_adds():
  plain, plain_vars, _ = converted("resnet18", False)
  macs = count_macs
  checked = 0
  for i, spec in enumerate(plain.layers):
    if not getattr(spec, "structured", False):
      assert structured_lib.saving(spec) == 0.0
      continue
    one = plain_layers.PlainNet((spec,))
    v = {"params": {"layers_0": plain_vars["params"][f"layers_{i}"]}}
    h = jnp.zeros((1, 8, 8, spec.in_features))
    dense = macs(functools.partial(one.apply, structured=False), v, h)
    kept = macs(functools.partial(one.apply, structured=True), v, h)
    # count_macs counts convs and matmuls; the copies' and identity adds' one multiply per
    # value are elementwise.
    out = jax.eval_shape(functools.partial(one.apply, structured=False), v, h).shape
    elementwise = spec.reserved or (spec.merged if spec.merged_identity else 0)
    kept += out[1] * out[2] * elementwise
    assert structured_lib.saving(spec) == pytest.approx(1 - kept / dense, abs=1e-9)
    checked += 1
  assert checked == sum(getattr(s, "structured", False) for s in plain.layers) > 8


def test_default_execution_follows_the_rule_per_conv(monkeypatch):
  plain, plain_vars, x = converted("bottleneck", False)
  structured_convs = [i for i, s in enumerate(plain.layers) if getattr(s, "structured", False)]
  choice = structured_lib.structured_choice(plain, "cpu")
  assert [i for i, c in enumerate(choice) if c] == [
    i for i in structured_convs if structured_lib.saving(plain.layers[i]) > 0
  ]
  assert not any(structured_lib.structured_choice(plain, "tpu"))  # unmeasured: dense
  # A threshold between the convs' savings runs some convs each way: the same function.
  savings = sorted({structured_lib.saving(plain.layers[i]) for i in structured_convs})
  assert len(savings) > 2
  threshold = savings[len(savings) // 2]
  monkeypatch.setitem(
    structured_lib.MIN_SAVING,
    "cpu",
    {"pointwise": threshold, "dense": threshold, "grouped": threshold, "depthwise": 0.0},
  )
  mixed = structured_lib.structured_choice(plain, "cpu")
  assert 0 < sum(mixed) < len(structured_convs)
  macs = count_macs
  dense_macs = macs(functools.partial(plain.apply, structured=False), plain_vars, x)
  auto_macs = macs(plain.apply, plain_vars, x)
  structured_macs = macs(functools.partial(plain.apply, structured=True), plain_vars, x)
  assert structured_macs < auto_macs < dense_macs
  dense, _ = dense_and_structured(plain, plain_vars, x)
  with jax.default_matmul_precision("highest"):
    auto = jax.jit(plain.apply)(plain_vars, x)
  chex.assert_trees_all_close(auto, dense, atol=1e-5, rtol=1e-5)
  # Training runs dense whatever the rule says (its gradients fill the zeros in).
  assert macs(functools.partial(plain.apply, train=True), plain_vars, x) == dense_macs


def test_kinds():
  conv = plain_layers.Conv
  assert structured_lib.kind(conv(8, 8, 3)) == "dense"
  assert structured_lib.kind(conv(8, 16, 1)) == "pointwise"
  assert structured_lib.kind(conv(8, 8, 3, groups=8)) == "depthwise"
  assert structured_lib.kind(conv(8, 16, 3, groups=2)) == "grouped"
