"""Network slimming of plain networks (Sec. 4.2, Fig. 4): exact where the removed channels are
zero, depthwise chains, grouped convs skipped, never to zero width, errors, and prune.py."""

import functools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import models, plain_io, transforms
from rmjax.models import plain as plain_layers
from rmjax.testing import eval_logits, random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One XLA program per conversion: eager conversion compiles op by op.
convert = jax.jit(transforms.rm_convert, static_argnums=0, static_argnames="keep_bn")

NETWORKS = {
  "resnet": ("resnet20", dict(stage_sizes=(1, 1, 1), widths=(8, 16, 16), stem_width=8)),
  # ReLU6: PReLU layers with `clipped` leading channels.
  "mobilenet": ("mobilenetv2_to_v1", dict(width=0.25, activation="relu6")),
  "rmnext": (
    "rmnext26x3_32",
    dict(widths=(16, 32, 32, 32), stage_sizes=(1, 1, 1, 1), channels_per_group=8),
  ),
}


@functools.cache
def converted(name: str, keep_bn: bool = True):
  """`(plain, plain_variables, x)`: a small network with random BN, converted by RM."""
  factory, kwargs = NETWORKS[name]
  model = models.create(factory, num_classes=10, stem="cifar", **kwargs)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), jnp.float32)
  variables = random_variables(model, x, seed=3)
  plain, plain_vars = convert(model, variables, keep_bn=keep_bn)
  return plain, plain_vars, x


def zero_channels(variables, zeros):
  """A copy with BN scale and bias 0 for `{bn layer: [channels]}`: the removed channels are then
  exactly 0 after the activation, and the pruned network must compute the same logits."""
  params = dict(variables["params"])
  for i, channels in zeros.items():
    bn = dict(params[f"layers_{i}"])
    for name in ("scale", "bias"):
      values = np.array(bn[name])
      values[channels] = 0.0
      bn[name] = jnp.asarray(values)
    params[f"layers_{i}"] = bn
  return {**variables, "params": params}


def prune_zeroed(name, zeros):
  """Prunes just above 0 and checks the logits; returns `(plain, pruned, report)`."""
  plain, plain_vars, x = converted(name)
  zeroed = zero_channels(plain_vars, zeros)
  pruned, pruned_vars, report = transforms.prune(plain, zeroed, threshold=1e-6)
  want = eval_logits(plain, zeroed, x)
  got = eval_logits(pruned, pruned_vars, x)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=0)
  assert float(jnp.abs(want).max()) > 0.1  # not trivially small
  # The specs and the variables agree, layer by layer.
  expected = jax.eval_shape(pruned.init, jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes_and_dtypes(expected, pruned_vars)
  assert json.loads(json.dumps(report)) == report
  assert report["params_after"] < report["params_before"]
  print(
    f"\n{name}: params {report['params_before']} -> {report['params_after']}, "
    f"max |diff| {float(jnp.abs(got - want).max()):.2g}"
  )
  return plain, pruned, report


def changed(plain, pruned):
  return {i for i, (a, b) in enumerate(zip(plain.layers, pruned.layers, strict=True)) if a != b}


def removed(report):
  return {e["layer"]: e["removed"] for e in report["layers"] if e["removed"]}


def test_threshold_zero_changes_nothing():
  for name in NETWORKS:
    plain, plain_vars, _ = converted(name)
    pruned, pruned_vars, report = transforms.prune(plain, plain_vars, threshold=0.0)
    assert pruned.layers == plain.layers
    chex.assert_trees_all_equal(pruned_vars, plain_vars)
    assert report["params_after"] == report["params_before"]
    assert not removed(report)


def test_resnet_zeroed_channels_are_removed_exactly():
  plain, plain_vars, _ = converted("resnet")
  snapshot = jax.tree.map(np.array, plain_vars)
  # BN 4 and BN 16 carry reserved channels (RM, Eq. 3) at their ends. Conv 6 merges layer1_0's
  # identity shortcut (its output j adds BN 4's reserved channel 8 + j); conv 18 merges
  # layer3_0's projection, and its BN 19 feeds the Dense.
  assert (plain.layers[4].reserved, plain.layers[16].reserved) == (8, 16)
  assert plain.layers[6].merged_identity and not plain.layers[18].merged_identity
  zeros = {1: [1, 5], 4: [2, 10, 12, 14, 15], 7: [2, 3, 6], 16: [0, 20, 31], 19: [3, 7]}
  _, pruned, report = prune_zeroed("resnet", zeros)
  # A merged output goes only with its shortcut: 2 and 6 (reserved 10 and 14 zeroed too), not
  # 3, whose shortcut (reserved 11) carries the block input; the projection's outputs stay.
  assert removed(report) == {0: [1, 5], 3: [2, 10, 12, 14, 15], 6: [2, 6], 15: [0, 20, 31]}
  assert changed(plain, pruned) == {0, 1, 3, 4, 6, 7, 9, 15, 16, 18}
  layers = pruned.layers
  assert (layers[0].out_features, layers[3].in_features) == (6, 6)
  assert layers[4] == plain_layers.BatchNorm(11, reserved=4)  # 4 of the 8 reserved went
  assert (layers[6].in_features, layers[6].out_features, layers[9].in_features) == (11, 6, 6)
  assert layers[16] == plain_layers.BatchNorm(29, reserved=14)
  assert (layers[18].in_features, layers[18].out_features) == (29, 16)
  assert report["skipped"] == []
  chex.assert_trees_all_equal(jax.tree.map(np.array, plain_vars), snapshot)  # not mutated


def test_mobilenet_depthwise_chains_shrink_together():
  plain, _, _ = converted("mobilenet")
  assert plain.layers[15].groups == 32 and plain.layers[14].clipped == 24
  zeros = {
    # Only the depthwise conv's BN: its channel is silenced, and so is the conv feeding it.
    4: [2],
    # The pointwise conv's BN and the depthwise BN after it (otherwise the depthwise BN's shift
    # would be a dropped constant); 30 is a reserved, unclipped PReLU channel.
    13: [5, 30],
    16: [5, 30],
    79: [0, 100],  # the last conv, before GlobalAvgPool + Dense
  }
  _, pruned, report = prune_zeroed("mobilenet", zeros)
  assert removed(report) == {0: [2], 12: [5, 30], 78: [0, 100]}
  chains = {e["layer"]: e["depthwise"] for e in report["layers"]}
  assert (chains[0], chains[12], chains[78]) == ([3], [15], [])
  layers = pruned.layers
  assert layers[3] == plain_layers.Conv(7, 7, 3, padding=1, groups=7, use_bias=False)
  assert (layers[6].in_features, layers[15].groups, layers[18].in_features) == (7, 30, 30)
  assert layers[13] == layers[16] == plain_layers.BatchNorm(30, reserved=7)
  assert layers[14] == layers[17] == plain_layers.PReLU(30, max_value=6, clipped=23)
  assert layers[82] == plain_layers.Dense(254, 10)


def test_rmnext_grouped_convs_are_skipped_the_rest_pruned():
  plain, _, _ = converted("rmnext")
  grouped = [i for i, layer in enumerate(plain.layers) if getattr(layer, "groups", 1) > 1]
  assert grouped == [5, 14, 23]
  # BN 3 feeds the grouped conv 5: its zeroed channel stays.
  zeros = {3: [0], 9: [1, 4], 33: [10, 90], 36: [0]}
  _, pruned, report = prune_zeroed("rmnext", zeros)
  # Convs 8 and 35 merge projection shortcuts (every block here changes width or stride):
  # their zeroed BN channels still carry the shortcut, so they stay.
  assert (plain.layers[8].merged, plain.layers[8].merged_identity) == (64, False)
  assert removed(report) == {32: [10, 90]}
  skipped = {s["layer"]: s["reason"] for s in report["skipped"]}
  assert sorted(skipped) == [0, 2, 5, 11, 14, 20, 23]
  assert "no BatchNorm" in skipped[0]  # the RepVGG stem is one biased conv even with keep_bn
  assert all("grouped conv" in skipped[i] for i in (2, 5, 11, 14, 20, 23))
  assert {e["layer"] for e in report["layers"]} == {8, 17, 26, 29, 32, 35}
  # The pruned conv, its BN and its consumer change; the grouped convs do not.
  assert changed(plain, pruned) == {32, 33, 35}
  assert pruned.layers[33].features == 94 and pruned.layers[35].in_features == 94


def test_a_layer_never_loses_every_channel():
  plain, plain_vars, x = converted("resnet")
  pruned, pruned_vars, report = transforms.prune(plain, plain_vars, threshold=1e9)
  assert len(report["layers"]) == 7  # every conv of this ResNet
  # All but the convs that merge a projection shortcut, whose outputs stay (see prune).
  kept = {12: 16, 18: 16}
  assert all(e["channels_after"] == kept.get(e["layer"], 1) for e in report["layers"])
  # The survivor is the channel with the largest |scale|.
  scale = np.abs(np.asarray(plain_vars["params"]["layers_1"]["scale"]))
  assert report["layers"][0]["removed"] == sorted(set(range(8)) - {int(scale.argmax())})
  assert pruned.layers[22] == plain_layers.Dense(16, 10)
  assert np.isfinite(np.asarray(eval_logits(pruned, pruned_vars, x))).all()


def test_errors():
  plain, plain_vars, _ = converted("resnet")
  with pytest.raises(ValueError, match=">= 0"):
    transforms.prune(plain, plain_vars, threshold=-1e-3)
  deploy, deploy_vars, _ = converted("resnet", keep_bn=False)
  with pytest.raises(ValueError, match=r"keep_bn=True\) \(convert.py --keep_bn\)"):
    transforms.prune(deploy, deploy_vars, threshold=1e-3)
  params = {k: v for k, v in plain_vars["params"].items() if k != "layers_4"}
  with pytest.raises(ValueError, match="missing params/layers_4/scale"):
    transforms.prune(plain, {**plain_vars, "params": params}, threshold=1e-3)
  with pytest.raises(ValueError, match="cannot run under jax.jit"):
    jax.jit(lambda v: transforms.prune(plain, v, 1e-3)[1])(plain_vars)


def run_cli(*args):
  result = subprocess.run(
    [sys.executable, "prune.py", *args], cwd=ROOT, capture_output=True, text=True
  )
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  return result


def test_cli_prunes_a_plain_directory(tmp_path):
  plain, plain_vars, _ = converted("resnet")
  zeroed = zero_channels(plain_vars, {1: [1, 5], 4: [11], 7: [3]})
  plain_dir, pruned_dir = str(tmp_path / "plain"), str(tmp_path / "pruned")
  source = {"model": "resnet20", "keep_bn": True}
  plain_io.save_plain(plain_dir, plain, zeroed, input_shape=(32, 32, 3), source=source)
  result = run_cli(plain_dir, pruned_dir, "--threshold=1e-6")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "8 -> 6" in result.stdout and "16 -> 15" in result.stdout and "8 -> 7" in result.stdout
  assert f"wrote {pruned_dir}" in result.stdout
  pruned, pruned_vars = plain_io.load_plain(pruned_dir)
  want, want_vars, _ = transforms.prune(plain, zeroed, threshold=1e-6)
  assert pruned == want
  chex.assert_trees_all_equal(pruned_vars, want_vars)
  arch = plain_io.read_arch(pruned_dir)
  assert arch["input_shape"] == [32, 32, 3]
  assert arch["source"] == {**source, "pruned_from": plain_dir, "prune_threshold": 1e-6}
  # Errors are one paragraph: the existing PRUNED, then a deploy-form PLAIN.
  again = run_cli(plain_dir, pruned_dir, "--threshold=1e-6")
  assert again.returncode == 1 and again.stderr.startswith("error: ")
  assert "already exists; pass --overwrite" in again.stderr
  deploy, deploy_vars, _ = converted("resnet", keep_bn=False)
  plain_io.save_plain(plain_dir, deploy, deploy_vars, input_shape=(32, 32, 3), overwrite=True)
  refused = run_cli(plain_dir, str(tmp_path / "other"), "--threshold=1e-6")
  assert refused.returncode == 1 and "convert.py --keep_bn" in refused.stderr
  assert not os.path.exists(tmp_path / "other")


def test_inner_only_is_the_resnet_baseline():
  """Only block-inner channels go: zeroed reserved copies and block outputs stay."""
  plain, plain_vars, x = converted("resnet")
  zeros = {1: [1, 5], 4: [2, 12, 15], 16: [0, 20, 31], 19: [3, 7]}
  zeroed = zero_channels(plain_vars, zeros)
  pruned, pruned_vars, report = transforms.prune(plain, zeroed, threshold=1e-6, inner_only=True)
  # BN 4 has 8 reserved channels at its end (8..15): 12 and 15 are shortcut copies and stay;
  # BN 16 has 16 reserved (16..31): of its zeroed 0, 20, 31 only 0 is inner. BNs 1 and 19 are
  # block outputs.
  assert removed(report) == {3: [2], 15: [0]}
  assert {e["layer"] for e in report["skipped"]} >= {0, 18}
  chex.assert_trees_all_close(
    eval_logits(pruned, pruned_vars, x), eval_logits(plain, zeroed, x), atol=1e-5, rtol=0
  )


def flatten_channels(variables, layer, channels, biases):
  """A copy where BN `layer` has scale 0 and the given biases on `channels`: each of them then
  outputs a constant, which pruning must fold into the consumer instead of dropping."""
  params = jax.tree.map(np.array, variables["params"])
  params[f"layers_{layer}"]["scale"][channels] = 0.0
  params[f"layers_{layer}"]["bias"][channels] = biases
  return {**variables, "params": params}


def small_plain(*tail):
  """Conv(3 -> 6) + BN + ReLU, then `tail`: a plain network to prune the first conv of."""
  head = (
    plain_layers.Conv(3, 6, 3, padding=1, use_bias=False),
    plain_layers.BatchNorm(6),
    plain_layers.ReLU(),
  )
  plain = plain_layers.PlainNet(head + tail)
  x = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
  return plain, random_variables(plain, x, seed=4), x


def test_flat_channels_fold_their_constant_into_the_classifier():
  plain, variables, x = small_plain(plain_layers.GlobalAvgPool(), plain_layers.Dense(6, 4))
  flat = flatten_channels(variables, 1, [1, 3, 4], [0.8, -0.5, 0.3])
  want = eval_logits(plain, flat, x)
  pruned, pruned_vars, report = transforms.prune(plain, flat, threshold=1e-6)
  assert removed(report) == {0: [1, 3, 4]}
  assert report["layers"][0]["folded"] == 2  # relu(-0.5) = 0 needs no folding
  chex.assert_trees_all_close(eval_logits(pruned, pruned_vars, x), want, atol=1e-5, rtol=0)
  # Vanilla network slimming drops the constants, and the logits move.
  vanilla, vanilla_vars, _ = transforms.prune(plain, flat, threshold=1e-6, fold_constants=False)
  assert float(jnp.abs(eval_logits(vanilla, vanilla_vars, x) - want).max()) > 1e-2


def test_a_flat_channel_before_a_3x3_conv_is_folded_exactly_away_from_the_border():
  plain, variables, x = small_plain(
    plain_layers.Conv(6, 4, 3, padding=1, use_bias=False), plain_layers.BatchNorm(4)
  )
  flat = flatten_channels(variables, 1, [1, 4], [0.7, 1.1])
  pruned, pruned_vars, _ = transforms.prune(plain, flat, threshold=1e-6)
  assert pruned.layers[0].out_features == pruned.layers[3].in_features == 4
  want, got = eval_logits(plain, flat, x), eval_logits(pruned, pruned_vars, x)
  chex.assert_trees_all_close(got[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], atol=1e-5, rtol=0)
  # On the border the padding now meets zeros where the constant used to be.
  assert float(jnp.abs(got - want).max()) > 1e-3
