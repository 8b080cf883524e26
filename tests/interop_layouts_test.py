"""`from_torch("CODE:ARCH", ...)`: the RMNet code's, the RepVGG code's and timm's checkpoints,
train-time and deploy-time, give their torch network's logits, and convert exactly.

The torch networks are tests/published_twins.py: those code bases' parameter names, shapes and
forward, with random weights and BN statistics. Everything here needs torch.
"""

import functools
import json

import chex
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import published_twins as tw  # noqa: E402  (needs torch)
from torchvision_twins import logits, randomize  # noqa: E402

import rmjax  # noqa: E402
from rmjax import interop, models, transforms  # noqa: E402
from rmjax.interop import rmnet_weights, torch_layouts  # noqa: E402
from rmjax.models.plain import Conv, PlainNet, PReLU  # noqa: E402
from rmjax.testing import eval_logits  # noqa: E402

X = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)

# name -> (CODE:ARCH, its twin, the rmjax type it imports as); tiny presets where there are.
CASES = {
  "rmnet-resnet20-imagenet-stem": (
    "rmnet:resnet20",
    lambda: tw.RMNet((3, 3, 3), 16, num_classes=1000),
    models.ResNet,
  ),
  "rmnet-rmnet20-deployed-bn-kept": (
    "rmnet:rmnet20",
    lambda: tw.deployed_rmnet((3, 3, 3), 16, num_classes=10, bn=True),
    PlainNet,
  ),
  "rmnet-rmnext26-cifar-stem": (
    "rmnet:rmnext26x3_32",
    lambda: tw.RMNeXt((2, 2, 2, 2), 3, 32, num_classes=10),
    models.RMNeXt,
  ),
  "rmnet-rmnext26-deployed-bn-folded-imagenet-stem": (
    "rmnet:rmnext26x3_32",
    lambda: tw.deployed_rmnext((2, 2, 2, 2), 3, 32, num_classes=1000, bn=False),
    PlainNet,
  ),
  "rmnet-mobilenetv1_cifar": (
    "rmnet:mobilenetv1_cifar",
    lambda: tw.rmobilenet(tw.MOBILENETV1_CIFAR, num_classes=10),
    models.MobileNetV2,
  ),
  "rmnet-mobilenetv2_imagenet-deployed": (
    "rmnet:mobilenetv2_imagenet",
    lambda: tw.deployed_rmobilenet(tw.MOBILENETV2_IMAGENET, num_classes=1000),
    PlainNet,
  ),
  "rmnet-rmrep_21": (
    "rmnet:rmrep_21",
    lambda: tw.RMRep(2, 0.25, num_classes=1000),
    models.RepVGG,
  ),
  "rmnet-repvgg_21-deployed": (
    "rmnet:repvgg_21",
    lambda: tw.deployed_rmrep(2, num_classes=1000),
    PlainNet,
  ),
  "repvgg-RepVGG-A0": (
    "repvgg:RepVGG-A0",
    lambda: tw.DingRepVGG(tw.A_SIZES, (0.75, 0.75, 0.75, 2.5), {}, num_classes=10),
    models.RepVGG,
  ),
  "repvgg-repvgg_a0-deployed": (
    "repvgg:repvgg_a0",
    lambda: tw.DingRepVGG(tw.A_SIZES, (0.75, 0.75, 0.75, 2.5), {}, num_classes=10, deploy=True),
    PlainNet,
  ),
  "timm-repvgg_a0": (
    "timm:repvgg_a0",
    lambda: tw.TimmRepVGG(tw.A_SIZES, (0.75, 0.75, 0.75, 2.5), 0, num_classes=10),
    models.RepVGG,
  ),
  "timm-repvgg_a0-deployed": (
    "timm:repvgg_a0",
    lambda: tw.TimmRepVGG(tw.A_SIZES, (0.75, 0.75, 0.75, 2.5), 0, num_classes=10, deploy=True),
    PlainNet,
  ),
}


@functools.cache
def twin(case):
  """`(torch network, its logits on X)`, random weights and BN statistics, eval mode."""
  net = randomize(CASES[case][1](), seed=len(case))
  return net, logits(net, X)


def assert_close(got, want):
  # float32, to 1e-4 of the logit scale (absolute below 1), as convert.py checks.
  bound = 1e-4 * max(1.0, float(np.max(np.abs(want))))
  chex.assert_trees_all_close(np.asarray(got), want, atol=bound, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_torch_before_and_after_rm(case):
  name, _, kind = CASES[case]
  net, want = twin(case)
  imported = interop.import_torch(name, net.state_dict())
  assert type(imported.model) is kind
  assert imported.name.startswith(torch_layouts.resolve(name)[1])
  plain, plain_vars = transforms.rm_convert_jit(imported.model, imported.variables)
  got = {"imported": eval_logits(imported.model, imported.variables, X)}
  got["rm_convert"] = eval_logits(plain, plain_vars, X)
  for form, value in got.items():
    print(f"{case} {form}: max |diff| {np.max(np.abs(np.asarray(value) - want)):.3g}")
    assert_close(value, want)
  assert np.max(np.abs(want)) > 0.1  # not a degenerate network


# --- without running the networks: names, keys, messages ---------------------------------------


def test_grouped_repvggs_group_the_same_layers_in_both_codes():
  # The RepVGG code groups layers 2, 4, ... 26 (the stem is 0), timm every odd block of a stage:
  # the same convs, rmjax's GROUPED_LAYERS. The kernels' shapes say so (in / groups).
  timm = tw.TimmRepVGG(tw.B_SIZES, (2, 2, 2, 4), 4, num_classes=10)
  model, _ = interop.from_torch("timm:repvgg_b1g4", timm.state_dict())
  assert model == models.create("repvgg_b1g4", num_classes=10)
  groups = dict.fromkeys(range(2, 27, 2), 2)
  ding = tw.DingRepVGG(tw.B_SIZES, (2, 2, 2, 4), groups, num_classes=10, deploy=True)
  plain, _ = interop.from_torch("repvgg:RepVGG-B1g2", ding.state_dict())
  convs = [layer for layer in plain.layers if hasattr(layer, "groups")]
  assert [c.groups for c in convs] == [2 if i in groups else 1 for i in range(len(convs))]


def test_the_rmnet_codes_mobilenetv2_imagenet_is_rmjaxs_mobilenetv2():
  net = tw.rmobilenet(tw.MOBILENETV2_IMAGENET, num_classes=1000)
  model, variables = interop.from_torch("rmnet:mobilenetv2_imagenet", net.state_dict())
  assert model == models.create("mobilenetv2", num_classes=1000, stem="imagenet")
  want = net.features[3].conv[6].weight.detach().numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(variables["params"]["block3"]["project"]["kernel"], want)


def test_a_deployed_network_is_read_module_by_module():
  net = tw.deployed_rmobilenet(tw.MOBILENETV1_CIFAR, num_classes=10)
  plain, variables = interop.from_torch("rmnet:mobilenetv1_cifar", net.state_dict())
  torch_layers = [m for m in net.features if not isinstance(m, torch.nn.Identity)]
  assert len(plain.layers) == len(torch_layers) + 2  # + the mean and the classifier
  prelus = [i for i, m in enumerate(torch_layers) if isinstance(m, torch.nn.PReLU)]
  assert prelus and all(isinstance(plain.layers[i], PReLU) for i in prelus)
  np.testing.assert_array_equal(
    variables["params"][f"layers_{prelus[0]}"]["slope"], net.features[prelus[0]].weight.detach()
  )
  # The V2 -> V1 network: every depthwise conv as wide as MobileNetV1's (Sec. 4.4), after the
  # RMNet code's deploy() and after rmjax's rm_convert of the train-time network alike.
  model = rmnet_weights.rmobilenet("mobilenetv1_cifar", 10)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  converted, _ = jax.eval_shape(functools.partial(transforms.rm_convert, model), abstract)
  for net in (plain, converted):
    dw = [layer.in_features for layer in net.layers if getattr(layer, "groups", 1) > 1]
    assert dw == [32, 64, 128, 128, 256, 256, *[512] * 6, 1024]


def test_rmrep_reads_its_reserve_ratio_and_refuses_its_cifar_form():
  model, _ = interop.from_torch("rmnet:rmrep_69", tw.RMRep(8, 0.5, 1000).state_dict())
  assert model == models.create("repvgg69", num_classes=1000, reserve_ratio=0.5)
  model, _ = interop.from_torch("rmnet:repvgg_21", tw.RMRep(2, 0, 1000).state_dict())
  assert model == models.create("repvgg21", num_classes=1000)
  # Built for other than 1000 classes, RMRep's stage 1 starts with a pair: not rmjax's.
  for cifar in (tw.RMRep(2, 0.25, 10), tw.deployed_rmrep(2, 10)):
    with pytest.raises(interop.WeightImportError, match="holds the RMNet code's CIFAR RMRep"):
      interop.from_torch("rmnet:rmrep_21", cifar.state_dict())


def test_every_mismatch_is_named_at_once():
  sd = {k: v.numpy() for k, v in tw.RMNet((3, 3, 3), 16, num_classes=10).state_dict().items()}
  del sd["layer2.1.conv2.weight"]
  sd["layer3.0.bn1.running_var"] = np.ones(65, np.float32)
  sd["layer4.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  with pytest.raises(interop.WeightImportError) as e:
    interop.from_torch("rmnet:resnet20", sd)
  message = str(e.value)
  assert "(RMNet code, train-time) does not fit ResNet with 10 classes (3 problem(s))" in message
  assert "missing layer2.1.conv2.weight (shape (32, 32, 3, 3)" in message
  assert "layer3.0.bn1.running_var has shape (65,), expected (64,)" in message
  assert "unexpected layer4.0.conv1.weight" in message
  assert "running1" not in message  # the RMNet code's own statistics are not needed


def test_a_deployed_network_with_missing_and_extra_modules():
  sd = tw.deployed_rmnet((3, 3, 3), 16, num_classes=10, bn=False).state_dict()
  del sd["4.bias"]
  sd["99.weight"] = torch.zeros(3)
  with pytest.raises(interop.WeightImportError) as e:
    interop.from_torch("rmnet:resnet20", sd)
  message = str(e.value)
  assert "resnet20 after deploy(), BN folded) does not fit PlainNet (2 problem(s))" in message
  assert "missing 4.bias (shape (16,), for layers_4/bias)" in message
  assert "unexpected 99.weight" in message


def test_squeeze_and_excitation_is_refused_by_name():
  net = tw.TimmRepVGG(tw.A_SIZES, (0.75, 0.75, 0.75, 2.5), 0, num_classes=10)
  sd = dict(net.state_dict())
  sd["stages.0.0.attn.fc1.weight"] = torch.zeros(3, 48, 1, 1)
  sd["stages.0.0.attn.fc1.bias"] = torch.zeros(3)
  with pytest.raises(interop.WeightImportError, match=r"\(1 problem\(s\)\):\n  unsupported: sq"):
    interop.from_torch("timm:repvgg_a0", sd)
  with pytest.raises(interop.WeightImportError, match="repvgg:RepVGG-D2se is not supported: sq"):
    interop.from_torch("repvgg:RepVGG-D2se", {})


@pytest.mark.parametrize(
  "name, message",
  [
    ("caffe:resnet18", "unknown code base 'caffe' in 'caffe:resnet18'; known: rmnet, repvgg, timm"),
    ("rmnet:resnet50", "unknown architecture 'resnet50' of the published RMNet code"),
    ("timm:RepVGG-A0", "unknown architecture 'RepVGG-A0' of timm's RepVGG"),
    ("rmnet:rmnet1202", "rmnet:rmnet1202 is not supported: rmjax has no 1202-layer"),
    ("rmnet18", "(other code bases' layouts: rmnet:rmnet18)"),
    ("repvgg_a0", "(other code bases' layouts: repvgg:repvgg_a0, timm:repvgg_a0)"),
  ],
)
def test_bad_names(tmp_path, name, message):
  # Names are checked before the file is read: it does not exist.
  with pytest.raises(interop.WeightImportError) as e:
    interop.from_torch(name, str(tmp_path / "nope.pth"))
  assert message in str(e.value)


def test_names_are_rmjax_models_and_every_alias_resolves():
  for name in interop.TORCH_LAYOUTS:
    arch = name.split(":")[1]
    assert arch in models.names() or arch == "mobilenetv1_cifar", name
  for code, base in torch_layouts.CODE_BASES.items():
    for alias, arch in base.aliases.items():
      assert torch_layouts.resolve(f"{code}:{alias}") == (base, arch)
  assert rmnet_weights.rmobilenet("mobilenetv1_cifar", 10).stem == "cifar"


# --- convert.py ------------------------------------------------------------------------------


def test_cli_converts_a_deployed_checkpoint_as_the_rmnet_code_saves_it(capsys, tmp_path):
  from convert_cli import assert_fails, run_cli

  net = randomize(tw.deployed_rmnet((3, 3, 3), 16, num_classes=10, bn=True), seed=3)
  # The RMNet code's train.py: a DataParallel model's state dict in a `.pth.tar` dictionary.
  state = {f"module.{k}": v for k, v in net.state_dict().items()}
  torch.save({"epoch": 90, "arch": "rmnet20", "state_dict": state}, tmp_path / "ckpt.pth.tar")
  plain_dir = tmp_path / "plain"
  args = ["--from_torch=rmnet:rmnet20", tmp_path / "ckpt.pth.tar", plain_dir, "--input_size=32"]
  code, out, err = run_cli(capsys, *args)
  assert code == 0, err
  assert "converting resnet20 after deploy(), BN kept (RMNet code)" in out
  source = json.loads((plain_dir / "plain.json").read_text())["source"]
  assert source["framework"] == "torch" and source["num_classes"] == 10
  plain, variables = rmjax.load_plain(str(plain_dir))
  assert_close(eval_logits(plain, variables, X), logits(net, X))
  args[0], args[2] = "--from_torch=rmnet:rmnet50", tmp_path / "other"
  assert_fails(capsys, tmp_path, args, "unknown architecture 'rmnet50' of the published RMNet")


@pytest.mark.parametrize(
  "name, twin",
  [
    ("timm:repvgg_a0", lambda: tw.TimmRepVGG(tw.A_SIZES, (0.75,) * 3 + (2.5,), 0, 10, True)),
    ("rmnet:resnet20", lambda: tw.deployed_rmnet((3, 3, 3), 16, 10, bn=False)),
    ("rmnet:rmnext26x3_32", lambda: tw.deployed_rmnext((2, 2, 2, 2), 3, 32, 10, bn=False)),
  ],
)
def test_a_deployed_network_has_the_layers_rm_convert_makes_of_the_train_time_one(name, twin):
  # The same layer table (the presets' default stems), the Dirac structure rmjax records aside:
  # the published conversions put reserved channels first, rmjax last.
  imported, _ = interop.from_torch(name, twin().state_dict())
  model = models.create(name.split(":")[1], num_classes=10)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  converted, _ = jax.eval_shape(functools.partial(transforms.rm_convert, model), abstract)
  unstructured = [x.unstructured() if isinstance(x, Conv) else x for x in converted.layers]
  assert list(imported.layers) == unstructured
