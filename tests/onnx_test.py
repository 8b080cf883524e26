"""rmjax.deploy.onnx: the ONNX model of a plain network computes what the plain network computes
(in ONNX Runtime, any batch size, both layouts, both forms), is refused and names the layer when
it does not, and convert.py --export onnx writes it next to PLAIN or writes nothing."""

import dataclasses
import functools
import os
import re
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from convert_cli import assert_fails
from torchvision_state_dicts import numpy_resnet18

import rmjax
from rmjax import export, models, run, transforms
from rmjax.deploy import onnx as onnx_export
from rmjax.models.plain import (
  BatchNorm,
  Conv,
  Dense,
  GlobalAvgPool,
  MaxPool,
  PlainNet,
  PReLU,
  ReLU,
  SqueezeExcite,
)
from rmjax.models.repvgg import ReservingRepBlock
from rmjax.testing import eval_logits, random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (32, 32, 3)
NARROW = dict(widths=(8, 16, 16, 32), stem_width=8)
NETWORKS = {
  "resnet18_cifar": ("resnet18", dict(stem="cifar", **NARROW)),
  "resnet18_imagenet": ("resnet18", dict(stem="imagenet", **NARROW)),
  # ReLU6 with reserved channels: PReLU layers whose first `clipped` channels are clipped at 6.
  "mobilenetv1_relu6": ("mobilenetv2_to_v1", dict(stem="cifar", width=0.25, activation="relu6")),
  "repvgg_reserving": (
    "repvgg21",
    dict(stem="cifar", reserve_ratio=0.5, stage_sizes=(3, 3, 1, 1), **NARROW),
  ),
  "rmnext": (
    "rmnext26x3_32",
    dict(stem="cifar", widths=(16, 32, 32, 32), stage_sizes=(1, 1, 1, 1), channels_per_group=8),
  ),
}
# What each network must show, so that the test covers the mapping it is here for:
# (ONNX op types, plain network, original model) -> bool.
SIGNS = {
  "resnet18_cifar": lambda ops, plain, model: "MaxPool" not in ops,
  "resnet18_imagenet": lambda ops, plain, model: "MaxPool" in ops,
  "mobilenetv1_relu6": lambda ops, plain, model: (
    {"PRelu", "Min", "Clip"} <= ops
    and any(isinstance(layer, PReLU) and layer.clipped for layer in plain.layers)
  ),
  "repvgg_reserving": lambda ops, plain, model: any(
    isinstance(block, ReservingRepBlock) for block in model.layout()
  ),
  "rmnext": lambda ops, plain, model: any(
    isinstance(layer, Conv) and 1 < layer.groups < layer.in_features for layer in plain.layers
  ),
}

convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames=("keep_bn", "features"))


@functools.cache
def network(name: str, *, zero_scale_fraction: float = 0.0):
  """`(model, variables)`: a small registered network with random non-trivial BN."""
  factory, kwargs = NETWORKS[name]
  model = models.create(factory, num_classes=10, **kwargs)
  x = jnp.zeros((1, *SHAPE), jnp.float32)
  return model, random_variables(model, x, seed=2, zero_scale_fraction=zero_scale_fraction)


@functools.cache
def converted(name: str, keep_bn: bool = False):
  model, variables = network(name)
  return convert(model, variables, keep_bn=keep_bn)


def images(n: int, shape=SHAPE, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def assert_same_logits(got, plain, variables, x):
  """The project's rule: max |diff| <= 1e-4 x max(1, max |logit|), logits not trivially small."""
  want = np.asarray(eval_logits(plain, variables, x))
  scale = float(np.max(np.abs(want)))
  assert scale > 0.1
  print(f"max |diff| {np.max(np.abs(got - want)):.3g}, max |logit| {scale:.3g}")
  chex.assert_trees_all_close(np.asarray(got), want, atol=1e-4 * max(1.0, scale), rtol=0)


def ops(model) -> set[str]:
  return {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_onnx_computes_the_plain_network(name, tmp_path):
  plain, variables = converted(name)
  path = str(tmp_path / "net.onnx")
  check = onnx_export.export_onnx(plain, variables, SHAPE, path)
  assert check["max_abs_diff"] <= 1e-4 * max(1.0, check["logit_scale"])
  model = onnx.load(path)
  assert SIGNS[name](ops(model), plain, network(name)[0])
  assert "BatchNormalization" not in ops(model)
  assert_same_logits(onnx_export.load_onnx(path)(images(3)), plain, variables, images(3))


def test_kept_bn_form_has_batchnorm_nodes(tmp_path):
  plain, variables = converted("mobilenetv1_relu6", keep_bn=True)
  assert any(isinstance(layer, BatchNorm) for layer in plain.layers)
  path = str(tmp_path / "net.onnx")
  onnx_export.export_onnx(plain, variables, SHAPE, path)
  model = onnx.load(path)
  bn_layers = [f"layers_{i}" for i, lay in enumerate(plain.layers) if isinstance(lay, BatchNorm)]
  assert [n.name for n in model.graph.node if n.op_type == "BatchNormalization"] == bn_layers
  assert_same_logits(onnx_export.load_onnx(path)(images(3)), plain, variables, images(3))


# Every layer kind, asymmetric (TF "SAME") padding, a depthwise conv, ReLU6 and a partly clipped
# PReLU with slopes of both signs: small enough for the unit tests below.
TINY = PlainNet(
  (
    Conv(3, 8, 3, 2, padding=(0, 1), use_bias=False),
    BatchNorm(8, epsilon=1e-3),
    PReLU(8, max_value=6.0, clipped=5),
    Conv(8, 8, 3, 1, padding=1, groups=8),
    ReLU(6.0),
    MaxPool(),
    Conv(8, 12, 1),
    ReLU(),
    GlobalAvgPool(),
    Dense(12, 5),
  )
)
TINY_SHAPE = (16, 16, 3)


@pytest.fixture(scope="module")
def tiny():
  variables = random_variables(TINY, np.zeros((1, *TINY_SHAPE), np.float32), seed=3)
  variables["params"]["layers_2"]["slope"] = np.linspace(-0.5, 1.0, 8).astype(np.float32)
  return variables


@pytest.mark.parametrize("layout", onnx_export.LAYOUTS)
def test_any_batch_size_either_layout(tiny, tmp_path, layout):
  path = str(tmp_path / "net.onnx")
  onnx_export.export_onnx(TINY, tiny, TINY_SHAPE, path, layout=layout)
  model = onnx.load(path)
  assert model.opset_import[0].version == onnx_export.OPSET
  assert {p.key: p.value for p in model.metadata_props} == {"layout": layout}
  (shape,) = [i.type.tensor_type.shape.dim for i in model.graph.input]
  assert shape[0].dim_param == "batch"
  want_shape = TINY_SHAPE if layout == "nhwc" else (3, 16, 16)
  assert tuple(d.dim_value for d in shape[1:]) == want_shape
  run = onnx_export.load_onnx(path, threads=1)
  for n in (1, 5):  # the same artefact
    x = images(n, TINY_SHAPE, seed=n)
    fed = x if layout == "nhwc" else np.transpose(x, (0, 3, 1, 2))
    assert_same_logits(run(fed), TINY, tiny, x)


@pytest.mark.parametrize("layout", onnx_export.LAYOUTS)
@pytest.mark.parametrize(
  "net",
  [
    # No head: the output is an image, in the artefact's layout.
    PlainNet((Conv(3, 4, 3, 2, padding=(0, 1)), PReLU(4), MaxPool())),
    # BN and PReLU on features (2-D), after the pooling.
    PlainNet((Conv(3, 4, 3), GlobalAvgPool(), BatchNorm(4), PReLU(4, 1.0, 2), Dense(4, 3))),
  ],
  ids=["headless", "features"],
)
def test_layers_on_images_and_on_features(tmp_path, layout, net):
  x = images(2, (8, 8, 3))
  variables = random_variables(net, x, seed=4)
  path = str(tmp_path / "net.onnx")
  onnx_export.export_onnx(net, variables, (8, 8, 3), path, layout=layout)
  nchw = layout == "nchw"
  got = onnx_export.load_onnx(path)(np.transpose(x, (0, 3, 1, 2)) if nchw else x)
  if got.ndim == 4 and nchw:
    got = np.transpose(got, (0, 2, 3, 1))
  assert_same_logits(got, net, variables, x)


def test_names_map_back_to_layers(tiny):
  model = onnx_export.to_onnx(TINY, tiny, TINY_SHAPE)
  names = [node.name for node in model.graph.node]
  assert names[0] == "images/nchw" and names[-1] == "logits"
  layers = {name.split("/")[0] for name in names[1:-1]}
  assert layers == {f"layers_{i}" for i in range(len(TINY.layers))}
  weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
  # HWIO -> OIHW, otherwise the very same numbers.
  np.testing.assert_array_equal(
    weights["layers_3/kernel"], np.transpose(tiny["params"]["layers_3"]["kernel"], (3, 2, 0, 1))
  )
  assert [float(b) for b in weights["layers_2/max"].ravel()] == [6.0] * 5 + [np.inf] * 3


def test_docs_loader_example_runs(tiny, tmp_path):
  """The onnxruntime loader of docs/interop.md, run as written (only the path changes)."""
  path = str(tmp_path / "plain.onnx")
  onnx_export.export_onnx(TINY, tiny, TINY_SHAPE, path)
  with open(os.path.join(ROOT, "docs", "interop.md")) as f:
    doc = f.read()
  code = re.search(r"<!-- onnx loader example -->\n```python\n(.*?)```", doc, re.S)[1]
  scope = {}
  exec(code.replace("/tmp/plain.onnx", path), scope)
  assert scope["logits"].shape == (4, 5)
  chex.assert_trees_all_close(
    scope["logits"], eval_logits(TINY, tiny, np.zeros((4, *TINY_SHAPE))), atol=1e-5, rtol=0
  )


def corrupt(initializer: str, factor: float):
  """A `to_onnx` whose model has one weight scaled by `factor`."""
  to_onnx = onnx_export.to_onnx

  def corrupted(*args, **kwargs):
    model = to_onnx(*args, **kwargs)
    (tensor,) = [t for t in model.graph.initializer if t.name == initializer]
    tensor.CopyFrom(
      onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * factor, initializer)
    )
    return model

  return corrupted


@pytest.mark.parametrize(
  "initializer, message",
  [("layers_6/kernel", "layer 6 (Conv: Conv(8, 12"), ("layers_2/slope", "layer 2 (PReLU:")],
)
def test_a_wrong_export_is_refused_and_names_the_layer(
  tiny, tmp_path, monkeypatch, initializer, message
):
  monkeypatch.setattr(onnx_export, "to_onnx", corrupt(initializer, 1.5))
  path = tmp_path / "net.onnx"
  with pytest.raises(onnx_export.OnnxExportError, match="differs from the plain network") as e:
    onnx_export.export_onnx(TINY, tiny, TINY_SHAPE, str(path))
  assert message in str(e.value) and "nothing was written" in str(e.value)
  assert os.listdir(tmp_path) == []


def test_compare_layers_sees_only_the_wrong_layer(tiny):
  model = corrupt("layers_3/kernel", 1.01)(TINY, tiny, TINY_SHAPE)
  rows = onnx_export.compare_layers(model, TINY, tiny, images(4, TINY_SHAPE))
  assert [r["layer"] for r in rows] == list(range(len(TINY.layers)))
  wrong = [r["layer"] for r in rows if r["relative"] > 1e-4]
  assert wrong == [3], rows


@dataclasses.dataclass(frozen=True)
class Swish:
  def __call__(self, x, *, train: bool, name: str):
    return nn.swish(x)


def test_unsupported_layers_name_themselves():
  x = np.zeros((1, 8, 8, 3), np.float32)
  net = PlainNet((Conv(3, 4, 3, padding=1), ReLU(), Swish(), GlobalAvgPool(), Dense(4, 2)))
  with pytest.raises(onnx_export.OnnxExportError, match=r"layer 2 \(Swish"):
    onnx_export.to_onnx(net, random_variables(net, x), x.shape[1:])
  # A Dense layer on images (flax applies it per pixel) is not a Gemm.
  net = PlainNet((Conv(3, 4, 3, padding=1), Dense(4, 2)))
  with pytest.raises(onnx_export.OnnxExportError, match=r"layer 1 \(Dense: .* gets a 4-D one"):
    onnx_export.to_onnx(net, random_variables(net, x), x.shape[1:])


def test_without_onnx_the_error_says_what_to_install(tmp_path):
  """Where onnx is not installed, importing rmjax (and its transforms, deploy and export
  modules) still works and does not even try to import it; an ONNX function names the fix."""
  for name in ("onnx", "onnxruntime"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(
      f"print('tried to import {name}')\nraise ImportError('no {name} here')\n"
    )
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
  code = (
    "import rmjax, rmjax.transforms, rmjax.deploy, rmjax.export\n"
    "print('imported')\n"
    "from rmjax.models.plain import PlainNet, ReLU\n"
    "from rmjax.deploy import onnx\n"
    "for call in (lambda: onnx.to_onnx(PlainNet((ReLU(),)), {}, (4, 4, 3)),\n"
    "             lambda: onnx.load_onnx('x.onnx')):\n"
    "  try:\n"
    "    call()\n"
    "  except ImportError as e:\n"
    "    print(e)\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0] == "imported", lines  # no import of onnx before an ONNX function is called
  errors = [line for line in lines if line.startswith("ONNX export needs onnx and onnxruntime")]
  assert len(errors) == 2 and all("pip install 'rmjax[deploy]'" in e for e in errors), lines


def test_a_pruned_network_exports_through_export_plain(tmp_path):
  """Slimming's pipeline end (Fig. 4): a kept-BN conversion with zero BN scales, pruned, then
  converted to the deploy form and exported by the library path of `convert.py --export`."""
  model, variables = network("resnet18_cifar", zero_scale_fraction=0.3)
  plain, plain_vars = convert(model, variables, keep_bn=True)
  pruned, pruned_vars, report = transforms.prune(plain, plain_vars, threshold=1e-6)
  assert report["params_after"] < report["params_before"]
  origin = {"model": "pruned resnet18", "notes": []}
  source = run.Run("pruned", None, None, pruned, pruned_vars, SHAPE, origin)
  report = export.export_plain(source, str(tmp_path / "plain"), exports=("onnx",))
  assert report["exports"]["onnx"]["path"] == str(tmp_path / "plain.onnx")
  assert sorted(os.listdir(tmp_path)) == ["plain", "plain.onnx", "plain.onnx.sha256"]  # + digest
  deployed, deployed_vars = rmjax.load_plain(str(tmp_path / "plain"))
  assert not any(isinstance(layer, BatchNorm) for layer in deployed.layers)
  widths = [layer.out_features for layer in deployed.layers if isinstance(layer, Conv)]
  assert widths != [layer.out_features for layer in plain.layers if isinstance(layer, Conv)]
  got = onnx_export.load_onnx(str(tmp_path / "plain.onnx"))(images(3))
  assert_same_logits(got, deployed, deployed_vars, images(3))


def test_convert_cli_writes_nothing_when_the_onnx_model_is_wrong(capsys, tmp_path, monkeypatch):
  """An imported torchvision ResNet-18 through `convert.py --export onnx` with a wrong ONNX
  model: one `error:` paragraph naming the layer, neither PLAIN nor the artefact written. (The
  same command succeeding: tests/interop_cli_test.py, `--export=stablehlo,savedmodel,onnx`.)"""
  from safetensors.numpy import save_file

  weights = tmp_path / "r18.safetensors"
  save_file(numpy_resnet18(num_classes=10), str(weights))
  monkeypatch.setattr(onnx_export, "to_onnx", corrupt("layers_5/kernel", 1.5))
  assert_fails(
    capsys,
    tmp_path,
    ["--from_torch=resnet18", weights, tmp_path / "plain", "--input_size=32", "--export=onnx"],
    "the onnx export failed (OnnxExportError: the ONNX model differs from the plain network",
    "layer 5 (Conv: Conv(128, 64",
  )


# --- squeeze-and-excitation, and backbone mode -----------------------------------------------


@pytest.mark.parametrize("channels", [5, 8], ids=["reserved_pass_through", "all_gated"])
def test_squeeze_excite_layer(tmp_path, channels):
  """The plain SqueezeExcite layer: the first `channels` channels gated, the rest untouched; a
  wrong fc2 weight is caught and named."""
  net = PlainNet(
    (Conv(3, 8, 3, padding=1), ReLU(), SqueezeExcite(8, 3, channels), GlobalAvgPool(), Dense(8, 4))
  )
  x = images(3, (6, 6, 3))
  variables = random_variables(net, x, seed=5)
  path = str(tmp_path / "se.onnx")
  onnx_export.export_onnx(net, variables, (6, 6, 3), path)
  model = onnx.load(path)
  assert {"GlobalAveragePool", "Sigmoid", "Mul"} <= ops(model)
  assert ("Concat" in ops(model)) == (channels < 8)
  assert_same_logits(onnx_export.load_onnx(path)(x), net, variables, x)
  # Layer by layer, on its own input: the SE layer's output maps back to layer 2.
  rows = onnx_export.compare_layers(model, net, variables, x)
  assert rows[2]["type"] == "SqueezeExcite" and rows[2]["relative"] < 1e-5
  wrong = corrupt("layers_2/fc2/kernel", 1.5)(net, variables, (6, 6, 3))
  rows = onnx_export.compare_layers(wrong, net, variables, x)
  assert [r["layer"] for r in rows if r["relative"] > 1e-4] == [2]


@pytest.mark.parametrize("layout", onnx_export.LAYOUTS)
def test_converted_se_networks_export_with_one_output_per_feature_map(tmp_path, layout):
  """An SE-ResNet's and an SE-MobileNetV2's plain networks (gates of their own channels
  beside reserved ones), in backbone mode: `features_{k}` is feature map k."""
  nets = {
    "seresnet18": dict(stem="imagenet", se_reduction=4, stage_sizes=(1, 1, 1, 1), **NARROW),
    "mobilenetv2": dict(stem="cifar", width=0.35, se_ratio=0.25),
  }
  for name, kwargs in nets.items():
    model = models.create(name, num_classes=10, **kwargs)
    variables = random_variables(model, np.zeros((1, *SHAPE), np.float32), seed=2)
    plain, plain_vars = convert(model, variables, features=True)
    assert any(isinstance(layer, SqueezeExcite) for layer in plain.layers)
    path = str(tmp_path / f"{name}.onnx")
    onnx_export.export_onnx(plain, plain_vars, SHAPE, path, layout=layout, features=True)
    outputs = [o.name for o in onnx.load(path).graph.output]
    assert outputs == [f"features_{k}" for k in range(len(plain.taps))]
    x = images(2)
    got = onnx_export.load_onnx(path)(x if layout == "nhwc" else np.transpose(x, (0, 3, 1, 2)))
    want = eval_logits(model, variables, x, features=True)  # the residual network's maps
    assert len(got) == len(want) == len(model.feature_taps())
    for g, w in zip(got, want, strict=True):
      g = g if layout == "nhwc" else np.transpose(g, (0, 2, 3, 1))
      scale = float(np.max(np.abs(w)))
      chex.assert_trees_all_close(g, np.asarray(w), atol=1e-4 * max(1.0, scale), rtol=0)
