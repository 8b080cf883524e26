"""rmjax.interop.from_torch: torchvision-layout weights give torch's logits, before and after RM.

The torch networks are tests/torchvision_twins.py (torchvision's names and forward). Tests that need
torch skip without it; the NumPy state dict path is tested without torch.
"""

import functools

import chex
import jax
import numpy as np
import pytest
from torchvision_state_dicts import numpy_resnet18

from rmjax import interop, transforms
from rmjax.models import mobilenet
from rmjax.testing import eval_logits

X = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames=("keep_bn",))


# --- without torch -------------------------------------------------------------------------


def test_numpy_state_dict_lands_on_the_right_paths():
  sd = numpy_resnet18(num_classes=7)
  model, variables = interop.from_torch("resnet18", sd)
  assert model.num_classes == 7 and model.stem == "imagenet"
  params, stats = variables["params"], variables["batch_stats"]
  w = sd["layer2.0.downsample.0.weight"]
  np.testing.assert_array_equal(params["layer2_0"]["proj_conv"]["kernel"], w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["head"]["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(params["stem"]["bn"]["scale"], sd["bn1.weight"])
  np.testing.assert_array_equal(stats["layer4_1"]["bn2"]["var"], sd["layer4.1.bn2.running_var"])
  transforms.check_variables(model, variables)


def test_every_mismatch_is_named_at_once():
  sd = numpy_resnet18()
  del sd["layer3.1.conv2.weight"]
  sd["layer1.0.bn1.running_mean"] = np.zeros(65, np.float32)
  sd["layer5.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  with pytest.raises(interop.WeightImportError) as e:
    interop.from_torch("resnet18", sd)
  message = str(e.value)
  assert "3 problem(s)" in message
  assert "missing layer3.1.conv2.weight (shape (256, 256, 3, 3)" in message
  assert "layer1.0.bn1.running_mean has shape (65,), expected (64,)" in message
  assert "unexpected layer5.0.conv1.weight" in message


def test_weights_under_other_names_get_a_short_hint():
  """Not one line per key (hundreds): counts, a few examples of each side, the likely cause."""
  sd = numpy_resnet18()
  with pytest.raises(interop.WeightImportError) as e:
    interop.from_torch("resnet18", {f"backbone.{k}": v for k, v in sd.items()})
  lines = str(e.value).splitlines()
  assert len(lines) == 3, lines
  assert "102 of the 102 keys it needs are missing and 102 of its 122 keys are not used" in lines[0]
  assert "its keys carry the prefix 'backbone.' (e.g. backbone.fc.bias)" in lines[0]
  assert examples(lines[1]) == ["fc.bias", "fc.weight", "layer1.0.bn1.bias"]
  assert examples(lines[2]) == ["backbone.conv1.weight", "backbone.bn1.weight", "backbone.bn1.bias"]
  renamed = {k.replace("layer", "stage").replace("bn", "norm"): v for k, v in sd.items()}
  with pytest.raises(interop.WeightImportError) as e:
    interop.from_torch("resnet18", renamed)
  lines = str(e.value).splitlines()
  assert len(lines) == 3 and "likely the weights of another architecture" in lines[0], lines
  assert set(examples(lines[1])) <= set(sd) and set(examples(lines[2])) <= set(renamed) - set(sd)


def examples(line):
  return line.split(":", 1)[1].strip().split(", ")


def test_bad_names_and_files(tmp_path):
  with pytest.raises(interop.WeightImportError, match="unknown torchvision architecture"):
    interop.from_torch("resnet19", numpy_resnet18())
  with pytest.raises(interop.WeightImportError, match="does not exist"):
    interop.from_torch("resnet18", str(tmp_path / "nope.pth"))
  (tmp_path / "w.npz").write_bytes(b"")
  with pytest.raises(interop.WeightImportError, match="unknown weight file type '.npz'"):
    interop.from_torch("resnet18", str(tmp_path / "w.npz"))
  with pytest.raises(interop.WeightImportError, match="not a state dict"):
    interop.from_torch("resnet18", {"conv1.weight": object()})
  with pytest.raises(interop.WeightImportError, match="expected a state dict"):
    interop.from_torch("resnet18", 3)


def test_safetensors_file(tmp_path):
  from safetensors.numpy import save_file

  sd = numpy_resnet18()
  save_file(sd, str(tmp_path / "w.safetensors"))
  _, want = interop.from_torch("resnet18", sd)
  _, got = interop.from_torch("resnet18", str(tmp_path / "w.safetensors"))
  chex.assert_trees_all_equal(got, want)
  (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  with pytest.raises(interop.WeightImportError, match="cannot be read as safetensors"):
    interop.from_torch("resnet18", str(tmp_path / "bad.safetensors"))


def test_mobilenetv2_width_and_classes_are_read_off_the_shapes():
  model = mobilenet.mobilenetv2(width=0.5, num_classes=5)
  # A torchvision-named state dict of the right shapes, made from the rmjax model's.
  shapes = interop.weights.abstract_variables(model)
  from rmjax.interop import torchvision_weights as tw

  sd = {}
  for path, shape in shapes.items():
    key, layout = tw._mobilenet_rule(model, path)
    sd[key] = np.zeros(layout.foreign_shape(shape), np.float32)
  imported = interop.import_torch("mobilenet_v2", sd)
  assert imported.model == model
  assert imported.name == "mobilenetv2 width 0.5 (torchvision)"
  assert "features.2.conv.1.0.weight" in sd and sd["features.2.conv.1.0.weight"].shape[1] == 1


# --- against torch -------------------------------------------------------------------------


@functools.cache
def torch_network(name):
  pytest.importorskip("torch")
  import torchvision_twins

  build = {
    "resnet18": torchvision_twins.resnet18,
    "resnet50": torchvision_twins.resnet50,
    "mobilenet_v2": torchvision_twins.MobileNetV2,
  }[name]
  net = torchvision_twins.randomize(build(num_classes=10), seed=1)
  return net, torchvision_twins.logits(net, X)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_logits_equal_torch_before_and_after_rm(name):
  net, want = torch_network(name)
  model, variables = interop.from_torch(name, net.state_dict())
  diffs = {"imported": eval_logits(model, variables, X)}
  for keep_bn in (False, True):
    plain, plain_vars = convert(model, variables, keep_bn=keep_bn)
    diffs["keep_bn" if keep_bn else "deploy"] = eval_logits(plain, plain_vars, X)
  for form, got in diffs.items():
    print(f"{name} {form}: max |diff| {np.max(np.abs(np.asarray(got) - want)):.3g}")
    chex.assert_trees_all_close(np.asarray(got), want, atol=1e-4, rtol=0)
  assert np.max(np.abs(want)) > 0.5  # not a degenerate network


def test_twin_has_torchvision_names_and_files_read_alike(tmp_path):
  torch = pytest.importorskip("torch")
  net, _ = torch_network("resnet18")
  sd = net.state_dict()
  assert set(sd) == set(numpy_resnet18())
  _, want = interop.from_torch("resnet18", sd)
  chex.assert_trees_all_equal(interop.from_torch("resnet18", net)[1], want)  # the module itself
  # DataParallel prefixes and a training script's wrapper are undone.
  wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
  torch.save(wrapped, tmp_path / "w.pth")
  _, got = interop.from_torch("resnet18", str(tmp_path / "w.pth"))
  chex.assert_trees_all_equal(got, want)
  (tmp_path / "bad.pth").write_bytes((tmp_path / "w.pth").read_bytes()[:1000])
  with pytest.raises(interop.WeightImportError, match="cannot be read by torch.load"):
    interop.from_torch("resnet18", str(tmp_path / "bad.pth"))


def test_pickled_model_is_refused_with_the_reason_and_what_to_do(tmp_path):
  torch = pytest.importorskip("torch")
  net, _ = torch_network("resnet18")
  torch.save(net, tmp_path / "whole.pth")  # the module itself: pickled classes, not a state dict
  with pytest.raises(interop.WeightImportError) as e:
    interop.from_torch("resnet18", str(tmp_path / "whole.pth"))
  message = str(e.value)
  assert "GLOBAL torchvision_twins.ResNet was not an allowed global" in message  # torch's reason
  assert "weights_only=False).state_dict(), 'weights.pth')" in message  # what to do instead
  assert "\x1b" not in message and "two options" not in message and "\n" not in message
