"""PyTorch twins of rmjax networks: the same function and the same weights, in `torch.nn`.

A twin is a minimal PyTorch re-build of an rmjax model from its architecture — `PlainNet`'s
layer specs, or the blocks of a `BlockNetwork`'s `layout()` (ResNet, SE-ResNet, pre-activation
ResNet, RMNeXt, MobileNetV1/V2, RepVGG) — with the variables copied in: kernels HWIO -> OIHW,
Dense kernels transposed, BN scale/bias/mean/var -> weight/bias/running_mean/running_var. It
takes NCHW inputs and computes the rmjax model's eval-mode logits; the benchmark times it beside
rmjax (`rmjax.bench.torch_timing`).

Each torch submodule is named as the Flax module whose variables it holds (`layer1_0.conv1`,
`layers_3`, `head.fc`), so copying the variables is one walk over their paths; every torch
parameter and BN statistic must receive one. Symmetric padding is the conv's own, asymmetric
padding a `ZeroPad2d` in front of it, and `padding="same"` (TensorFlow's, which depends on the
input's size) a pad computed from each input as it comes. BN momentum is torch's 0.1 (Flax's
0.9); in training mode torch updates `running_var` with the unbiased batch variance, Flax with
the biased one — the same cost, slightly different statistics.

torch is imported when a twin is built (`pip install 'rmjax[interop]'`); rmjax, and this module,
import without it.

  >>> module = twin_of(model, variables)                  # eval mode
  >>> logits = module(to_nchw(x))                         # == model.apply(variables, x, ...)
  >>> module = twin(network)                              # a `suites.Network`'s twin
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable

import numpy as np
from flax import traverse_util

from rmjax.models import layers, mobilenet, plain, preact, repvgg, resnet, rmnext, se
from rmjax.models.layers import BlockNetwork


def _torch():
  try:
    import torch
  except ImportError:
    raise ImportError("PyTorch twins need PyTorch: pip install 'rmjax[interop]'") from None
  return torch


@functools.cache
def _block_class():
  """`Block(forward, **children)`: a torch module whose forward is `forward(self, x)`."""
  nn = _torch().nn

  class Block(nn.Module):
    def __init__(self, forward: Callable, **children):
      super().__init__()
      self._forward = forward
      for name, child in children.items():
        self.add_module(name, child)

    def forward(self, x):
      return self._forward(self, x)

    def extra_repr(self):
      return getattr(self._forward, "__name__", "")

  return Block


def _block(forward: Callable, **children):
  return _block_class()(forward, **children)


def _sequential(**children):
  return _torch().nn.Sequential(collections.OrderedDict(children))


# --- layers -----------------------------------------------------------------------------------


def conv2d(
  in_features: int,
  out_features: int,
  kernel_size: int,
  stride: int = 1,
  pads: int | tuple[int, int] | str = 0,
  groups: int = 1,
  bias: bool = False,
):
  """`nn.Conv2d`, or `ZeroPad2d` + `nn.Conv2d` for asymmetric `pads` = (low, high), or for
  `pads="same"` (`plain.SAME`) a block that pads each input by TensorFlow's rule first."""
  nn = _torch().nn
  if pads == plain.SAME:
    conv = nn.Conv2d(in_features, out_features, kernel_size, stride, groups=groups, bias=bias)
    return _block(_same_padded_forward, conv=conv)
  low, high = (pads, pads) if isinstance(pads, int) else pads
  padding = low if low == high else 0
  conv = nn.Conv2d(
    in_features, out_features, kernel_size, stride, padding, groups=groups, bias=bias
  )
  if low == high:
    return conv
  return nn.Sequential(nn.ZeroPad2d((low, high, low, high)), conv)


def _same_padded_forward(self, x):
  # torch's own padding="same" refuses strides; this is TensorFlow's, per axis (NCHW).
  k, s = self.conv.kernel_size[0], self.conv.stride[0]
  (top, bottom), (left, right) = (plain.same_pads(n, k, s) for n in x.shape[2:])
  return self.conv(_torch().nn.functional.pad(x, (left, right, top, bottom)))


def batch_norm(features: int, epsilon: float = layers.BN_EPSILON):
  return _torch().nn.BatchNorm2d(features, eps=epsilon, momentum=1 - layers.BN_MOMENTUM)


def _activation(name: str = "relu", max_value: float | None = None):
  nn = _torch().nn
  if name == "relu6" or max_value == 6:
    return nn.ReLU6()
  if max_value is not None:
    return nn.Hardtanh(0.0, max_value)
  return nn.ReLU()


def _global_avg_pool(self, x):
  return x.mean((2, 3))


def _clipped_prelu(self, x):
  # PReLU, then its first `clipped` channels clipped at `max_value` (plain.PReLU).
  y = self.prelu(x)
  c = self.clipped
  return _torch().cat([y[:, :c].clamp(max=self.max_value), y[:, c:]], 1)


def _squeeze_excite_forward(self, x):
  # Gates the first `channels` channels (rmjax.models.squeeze_excite); the rest pass as they are.
  torch, c = _torch(), self.channels
  gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x[:, :c].mean((2, 3))))))
  return torch.cat([x[:, :c] * gate[:, :, None, None], x[:, c:]], 1)


def _squeeze_excite(channels: int, reduced: int):
  nn = _torch().nn
  module = _block(
    _squeeze_excite_forward, fc1=nn.Linear(channels, reduced), fc2=nn.Linear(reduced, channels)
  )
  module.channels = channels
  return module


def _plain_layer(layer):
  nn = _torch().nn
  if isinstance(layer, plain.Conv):
    return conv2d(
      layer.in_features,
      layer.out_features,
      layer.kernel_size,
      layer.stride,
      layer.padding,
      layer.groups,
      layer.use_bias,
    )
  if isinstance(layer, plain.BatchNorm):
    return batch_norm(layer.features, layer.epsilon)
  if isinstance(layer, plain.ReLU):
    return _activation(max_value=layer.max_value)
  if isinstance(layer, plain.PReLU):
    prelu = nn.PReLU(layer.features)
    if layer.max_value is None or layer.clipped == 0:
      return prelu
    module = _block(_clipped_prelu, prelu=prelu)
    module.clipped, module.max_value = layer.clipped, layer.max_value
    return module
  if isinstance(layer, plain.SqueezeExcite):
    return _squeeze_excite(layer.channels, layer.reduced)
  if isinstance(layer, plain.MaxPool):
    return nn.MaxPool2d(layer.window, layer.stride, layer.padding)
  if isinstance(layer, plain.GlobalAvgPool):
    return _block(_global_avg_pool)
  if isinstance(layer, plain.Dense):
    return nn.Linear(layer.in_features, layer.out_features)
  raise TypeError(f"no PyTorch twin for plain layer {layer}")


def plain_twin(net: plain.PlainNet):
  """`PlainNet`'s layers as an `nn.Sequential`, layer i named `layers_{i}` (its variables)."""
  return _sequential(**{f"layers_{i}": _plain_layer(layer) for i, layer in enumerate(net.layers)})


# --- blocks: one builder per block type of `BlockNetwork.layout()` -----------------------------


def _resnet_stem(stem: layers.Stem):
  nn = _torch().nn
  if stem.kind == "cifar":
    conv = conv2d(3, stem.features, 3, 1, 1)
  else:
    conv = conv2d(3, stem.features, 7, 2, 3)
  parts = dict(conv=conv, bn=batch_norm(stem.features), relu=nn.ReLU())
  if stem.kind == "imagenet":
    parts["pool"] = nn.MaxPool2d(3, 2, 1)
  return _sequential(**parts)


def _shortcut(self, x):
  if hasattr(self, "proj_conv"):
    return self.proj_bn(self.proj_conv(x))
  if hasattr(self, "shortcut_bn"):
    return self.shortcut_bn(x)
  return x


def _shortcut_modules(block: resnet.ResidualBlock) -> dict:
  if block.has_projection:
    return dict(
      proj_conv=conv2d(block.in_features, block.out_features, 1, block.strides),
      proj_bn=batch_norm(block.out_features),
    )
  return dict(shortcut_bn=batch_norm(block.in_features)) if block.shortcut_bn else {}


def _excite(self, y):
  return self.se(y) if hasattr(self, "se") else y  # SE blocks gate the branch before the sum


def _basic_forward(self, x):
  relu = _torch().relu
  y = relu(self.bn1(self.conv1(x)))
  y = self.bn2(self.conv2(y))
  return relu(_excite(self, y) + _shortcut(self, x))


def _bottleneck_forward(self, x):
  relu = _torch().relu
  y = relu(self.bn1(self.conv1(x)))
  y = relu(self.bn2(self.conv2(y)))
  y = self.bn3(self.conv3(y))
  return relu(_excite(self, y) + _shortcut(self, x))


def _basic_block(block: resnet.BasicBlock):
  inner = block.inner(0)
  return _block(
    _basic_forward,
    conv1=conv2d(block.in_features, inner, 3, block.strides, 1),
    bn1=batch_norm(inner),
    conv2=conv2d(inner, block.features, 3, 1, 1),
    bn2=batch_norm(block.features),
    **_shortcut_modules(block),
  )


def _bottleneck(block: resnet.Bottleneck):
  a, b = block.inner(0), block.inner(1)
  return _block(
    _bottleneck_forward,
    conv1=conv2d(block.in_features, a, 1),
    bn1=batch_norm(a),
    conv2=conv2d(a, b, 3, block.strides, 1),
    bn2=batch_norm(b),
    conv3=conv2d(b, block.out_features, 1),
    bn3=batch_norm(block.out_features),
    **_shortcut_modules(block),
  )


def _with_se(build):
  def build_se(block):
    module = build(block)
    module.add_module("se", _squeeze_excite(block.out_features, block.se_features))
    return module

  return build_se


def _preact_stem(stem: preact.PreActStem):
  if stem.kind == "cifar":
    return _sequential(conv=conv2d(3, stem.features, 3, 1, 1))
  return _sequential(conv=conv2d(3, stem.features, 7, 2, 3), pool=_torch().nn.MaxPool2d(3, 2, 1))


def _preact_forward(self, x):
  relu = _torch().relu
  a = y = relu(self.bn1(x))
  for i in range(1, self.convs + 1):
    if i > 1:
      y = relu(getattr(self, f"bn{i}")(y))
    y = getattr(self, f"conv{i}")(y)
  return y + (self.proj_conv(a) if hasattr(self, "proj_conv") else x)


def _preact_block(block: preact.PreActBlock):
  parts, width = {"bn1": batch_norm(block.in_features)}, block.in_features
  for i, (features, size, stride) in enumerate(block.convs(), start=1):
    if i > 1:
      parts[f"bn{i}"] = batch_norm(width)
    parts[f"conv{i}"] = conv2d(width, features, size, stride, size // 2)
    width = features
  if block.has_projection:
    parts["proj_conv"] = conv2d(block.in_features, block.out_features, 1, block.strides)
  module = _block(_preact_forward, **parts)
  module.convs = len(block.convs())
  return module


def _preact_norm(norm: preact.PreActNorm):
  return _sequential(bn=batch_norm(norm.features), relu=_torch().nn.ReLU())


def _rmnext_block(block: rmnext.RMNeXtBlock):
  mid = block.mid_features
  return _block(
    _bottleneck_forward,
    conv1=conv2d(block.in_features, mid, 1),
    bn1=batch_norm(mid),
    conv2=conv2d(mid, mid, 3, block.strides, 1, groups=block.groups),
    bn2=batch_norm(mid),
    conv3=conv2d(mid, block.out_features, 1),
    bn3=batch_norm(block.out_features),
    **_shortcut_modules(block),
  )


def _repvgg_stem_forward(self, x):
  for i in range(self.steps):
    a = getattr(self, f"bn3x3_{i}")(getattr(self, f"conv3x3_{i}")(x))
    b = getattr(self, f"bn1x1_{i}")(getattr(self, f"conv1x1_{i}")(x))
    x = _torch().relu(a + b)
  return x


def _repvgg_stem(stem: rmnext.RepVGGStem):
  parts, features = {}, 3
  for i, stride in enumerate(stem.strides):
    parts[f"conv3x3_{i}"] = conv2d(features, stem.features, 3, stride, 1)
    parts[f"bn3x3_{i}"] = batch_norm(stem.features)
    parts[f"conv1x1_{i}"] = conv2d(features, stem.features, 1, stride)
    parts[f"bn1x1_{i}"] = batch_norm(stem.features)
    features = stem.features
  module = _block(_repvgg_stem_forward, **parts)
  module.steps = len(stem.strides)
  return module


def _head(head: layers.Head, in_features: int):
  return _block(_head_forward, fc=_torch().nn.Linear(in_features, head.num_classes))


def _head_forward(self, x):
  return self.fc(x.mean((2, 3)))


def _mobile_conv(block: mobilenet.MobileBlock, in_f, out_f, kernel, stride=1, groups=1):
  pads = mobilenet.conv_padding(kernel, stride, block.padding)
  return conv2d(in_f, out_f, kernel, stride, pads, groups)


def _conv_bn(block: mobilenet.ConvBN):
  return _sequential(
    conv=_mobile_conv(block, block.in_features, block.features, block.kernel_size, block.strides),
    bn=batch_norm(block.features, block.bn_epsilon),
    act=_activation(block.activation),
  )


def _depthwise_separable(block: mobilenet.DepthwiseSeparable):
  c, eps = block.in_features, block.bn_epsilon
  return _sequential(
    depthwise=_mobile_conv(block, c, c, 3, block.strides, groups=c),
    depthwise_bn=batch_norm(c, eps),
    act1=_activation(block.activation),
    pointwise=_mobile_conv(block, c, block.features, 1),
    pointwise_bn=batch_norm(block.features, eps),
    act2=_activation(block.activation),
  )


def _inverted_residual_forward(self, x):
  y = x
  if hasattr(self, "expand"):
    y = self.act(self.expand_bn(self.expand(y)))
  y = _excite(self, self.act(self.depthwise_bn(self.depthwise(y))))
  y = self.project_bn(self.project(y))
  s = self.shortcut
  if s == y.shape[1]:
    return y + x
  if s:
    return _torch().cat([y[:, :s] + x[:, :s], y[:, s:]], 1)
  return y


def _inverted_residual(block: mobilenet.InvertedResidual):
  eps, hidden, dw = block.bn_epsilon, block.hidden_features, block.depthwise_features
  parts = {}
  if hidden:
    parts.update(
      expand=_mobile_conv(block, block.in_features, hidden, 1), expand_bn=batch_norm(hidden, eps)
    )
  parts.update(
    depthwise=_mobile_conv(block, dw, dw, 3, block.strides, groups=dw),
    depthwise_bn=batch_norm(dw, eps),
    project=_mobile_conv(block, dw, block.features, 1),
    project_bn=batch_norm(block.features, eps),
    act=_activation(block.activation),
  )
  if block.se_features:
    parts["se"] = _squeeze_excite(dw, block.se_features)
  module = _block(_inverted_residual_forward, **parts)
  module.shortcut = block.shortcut
  return module


def _conv_branches(features, in_features, strides, groups) -> dict:
  return dict(
    conv3x3=conv2d(in_features, features, 3, strides, 1, groups),
    bn3x3=batch_norm(features),
    conv1x1=conv2d(in_features, features, 1, strides, 0, groups),
    bn1x1=batch_norm(features),
  )


def _rep_forward(self, x):
  y = self.bn3x3(self.conv3x3(x)) + self.bn1x1(self.conv1x1(x))
  if hasattr(self, "bn_identity"):
    y = y + self.bn_identity(x)
  return _torch().relu(y)


def _rep_block(block: repvgg.RepBlock):
  parts = _conv_branches(block.features, block.in_features, block.strides, block.groups)
  if block.has_identity:
    parts["bn_identity"] = batch_norm(block.features)
  return _block(_rep_forward, **parts)


def _reserving_rep_forward(self, x):
  torch = _torch()
  n, c, h, w = x.shape
  g, r = self.groups, self.reserved
  by_group = x.view(n, g, c // g, h, w)
  computed = by_group[:, :, r:].reshape(n, -1, h, w)
  y = self.bn3x3(self.conv3x3(x)) + self.bn1x1(self.conv1x1(x)) + self.bn_identity(computed)
  y = torch.cat([by_group[:, :, :r], y.view(n, g, -1, h, w)], 2)
  return torch.relu(y.reshape(n, c, h, w))


def _reserving_rep_block(block: repvgg.ReservingRepBlock):
  computed = block.features - block.groups * block.reserved_per_group
  parts = _conv_branches(computed, block.features, 1, block.groups)
  parts["bn_identity"] = batch_norm(computed)
  module = _block(_reserving_rep_forward, **parts)
  module.groups, module.reserved = block.groups, block.reserved_per_group
  return module


# Exact types: a subclass may change the forward (RMNeXtBlock is a ResidualBlock too).
BLOCKS: dict[type, Callable] = {
  layers.Stem: _resnet_stem,
  resnet.BasicBlock: _basic_block,
  resnet.Bottleneck: _bottleneck,
  se.SEBasicBlock: _with_se(_basic_block),
  se.SEBottleneck: _with_se(_bottleneck),
  preact.PreActStem: _preact_stem,
  preact.PreActBasicBlock: _preact_block,
  preact.PreActBottleneck: _preact_block,
  preact.PreActNorm: _preact_norm,
  rmnext.RepVGGStem: _repvgg_stem,
  rmnext.RMNeXtBlock: _rmnext_block,
  mobilenet.ConvBN: _conv_bn,
  mobilenet.DepthwiseSeparable: _depthwise_separable,
  mobilenet.InvertedResidual: _inverted_residual,
  repvgg.RepBlock: _rep_block,
  repvgg.ReservingRepBlock: _reserving_rep_block,
}


def supports(model) -> bool:
  """Whether `twin_of` can build `model` (a PlainNet, or a BlockNetwork of known blocks)."""
  if isinstance(model, plain.PlainNet):
    return True
  return isinstance(model, BlockNetwork) and all(
    type(b) in BLOCKS or type(b) is layers.Head for b in model.layout()
  )


def architecture(model):
  """The twin of `model` with torch's initial weights (no variables copied): an
  `nn.Sequential` of its blocks (or plain layers), each named as in the Flax variables."""
  if isinstance(model, plain.PlainNet):
    return plain_twin(model)
  if not isinstance(model, BlockNetwork):
    raise TypeError(f"no PyTorch twin for {type(model).__name__}")
  parts, width = {}, 3
  for block in model.layout():
    if type(block) is layers.Head:
      parts[block.name] = _head(block, width)
      continue
    build = BLOCKS.get(type(block))
    if build is None:
      raise TypeError(
        f"no PyTorch twin for block {block.name} ({type(block).__name__}); known: "
        + ", ".join(t.__name__ for t in BLOCKS)
      )
    parts[block.name] = build(block)
    width = getattr(block, "out_features", getattr(block, "features", None))
  return _sequential(**parts)


# --- variables --------------------------------------------------------------------------------

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _holder(module):
  """The module that holds the weights of `module`: itself, or its only child with weights
  (a padded conv's `nn.Conv2d`, a clipped PReLU's `nn.PReLU`)."""
  while not any(p is not None for p in module._parameters.values()):
    children = [c for c in module.children() if any(True for _ in c.parameters())]
    if len(children) != 1:
      break
    module = children[0]
  return module


def _target(module, path: tuple[str, ...], leaf: str, value: np.ndarray):
  """`(name of the tensor in `module`, value in torch's layout)` for a Flax leaf."""
  nn = _torch().nn
  if isinstance(module, nn.Conv2d) and leaf in ("kernel", "bias"):
    return ("weight", value.transpose(3, 2, 0, 1)) if leaf == "kernel" else ("bias", value)
  if isinstance(module, nn.Linear) and leaf in ("kernel", "bias"):
    return ("weight", value.T) if leaf == "kernel" else ("bias", value)
  if isinstance(module, nn.BatchNorm2d) and leaf in _BN:
    return _BN[leaf], value
  if isinstance(module, nn.PReLU) and leaf == "slope":
    return "weight", value
  raise ValueError(f"no place for {'/'.join(path)} in {type(module).__name__}")


def load_variables(module, variables) -> None:
  """Copies Flax `variables` into the twin `module` (in place), converting layouts; a missing,
  extra or misshapen tensor raises a ValueError naming it. `module`'s dtype is kept."""
  torch = _torch()
  expected = {k for k in module.state_dict() if not k.endswith("num_batches_tracked")}
  problems, done = [], set()
  state = module.state_dict()
  names = {id(m): name for name, m in module.named_modules()}
  for collection in ("params", "batch_stats"):
    for path, value in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
      *where, leaf = path
      try:
        holder = _holder(module.get_submodule(".".join(where)))
        name, array = _target(holder, path, leaf, np.asarray(value, np.float32))
      except (AttributeError, ValueError) as e:
        problems.append(f"{collection}/{'/'.join(path)}: {e}")
        continue
      prefix = names[id(holder)]
      key = f"{prefix}.{name}" if prefix else name
      if tuple(state[key].shape) != array.shape:
        problems.append(f"{key}: shape {tuple(state[key].shape)}, variables give {array.shape}")
        continue
      with torch.no_grad():
        state[key].copy_(torch.tensor(array))
      done.add(key)
  problems += [f"{key}: no variable for it" for key in sorted(expected - done)]
  if problems:
    raise ValueError("the variables do not fit the twin:\n  " + "\n  ".join(problems))


def _torch_dtype(variables):
  import jax

  leaf = jax.tree.leaves(variables)[0]
  torch = _torch()
  return {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(str(leaf.dtype), torch.float32)


def twin_of(model, variables):
  """The PyTorch twin of the rmjax `model` with `variables` copied in, in eval mode and in the
  variables' dtype (float32 or bfloat16). Its NCHW output equals
  `model.apply(variables, x, train=False)` on NHWC `x`."""
  module = architecture(model)
  load_variables(module, variables)
  return module.to(_torch_dtype(variables)).eval()


def twin(network):
  """The twin of a benchmark `Network` (`rmjax.bench.suites`): of its model and variables. A
  plain network in any execution mode has the one twin, of its dense form."""
  if network.model is None:
    raise TypeError(f"{network.name} has no model to build a twin of")
  return twin_of(network.model, network.variables)


def to_nchw(x, dtype=None):
  """An NHWC array as a contiguous NCHW torch tensor (float32 unless `dtype`)."""
  torch = _torch()
  array = np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2))
  return torch.from_numpy(array).to(dtype or torch.float32)


def logits(module, x_nhwc) -> np.ndarray:
  """`module`'s output on NHWC inputs, float32 NumPy, without autograd."""
  torch = _torch()
  param = next(module.parameters())
  with torch.inference_mode():
    return module(to_nchw(x_nhwc, param.dtype)).float().numpy()
