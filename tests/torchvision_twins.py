"""PyTorch twins of torchvision's ResNet and MobileNetV2, for testing `rmjax.interop`.

torchvision's wheel does not import next to the local torch build, so these re-build its
networks: the same parameter and buffer names (`conv1.weight`, `layer1.0.downsample.0.weight`,
`features.1.conv.0.0.weight`, `classifier.1.weight`, ...), the same forward (ReLU6, padding
(k - 1) // 2, max-pool padding 1, adaptive average pool), BN eps 1e-5. Written from the
architecture's description, not from torchvision's source. (`rmjax.bench.torch_twins` is the other
direction: torch re-builds of rmjax networks, named as rmjax's variables, for the benchmark.)
"""

import numpy as np
import torch
from torch import nn


def _conv_bn(cin, cout, kernel, stride=1, groups=1):
  return [
    nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
    nn.BatchNorm2d(cout),
  ]


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, width, stride, downsample):
    super().__init__()
    self.conv1, self.bn1 = _conv_bn(cin, width, 3, stride)
    self.conv2, self.bn2 = _conv_bn(width, width, 3)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, width, stride, downsample):
    super().__init__()
    self.conv1, self.bn1 = _conv_bn(cin, width, 1)
    self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)  # stride on the 3x3
    self.conv3, self.bn3 = _conv_bn(width, width * 4, 1)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  def __init__(self, block, stage_sizes, num_classes=1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, (size, width) in enumerate(zip(stage_sizes, (64, 128, 256, 512), strict=True)):
      blocks = []
      for j in range(size):
        stride = 2 if i > 0 and j == 0 else 1
        cout = width * block.expansion
        downsample = None
        if stride != 1 or cin != cout:
          downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride))
        blocks.append(block(cin, width, stride, downsample))
        cin = cout
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes=1000):
  return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes=1000):
  return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


def _conv_bn_relu6(cin, cout, kernel, stride=1, groups=1):
  return nn.Sequential(*_conv_bn(cin, cout, kernel, stride, groups), nn.ReLU6())


def _make_divisible(v, divisor=8):
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


class InvertedResidual(nn.Module):
  def __init__(self, cin, cout, stride, expand_ratio):
    super().__init__()
    hidden = cin * expand_ratio
    self.use_res_connect = stride == 1 and cin == cout
    layers = [_conv_bn_relu6(cin, hidden, 1)] if expand_ratio != 1 else []
    layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden), *_conv_bn(hidden, cout, 1)]
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
  SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
  SETTING += ((6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(self, num_classes=1000, width_mult=1.0):
    super().__init__()
    cin = _make_divisible(32 * width_mult)
    last = _make_divisible(1280 * max(1.0, width_mult))
    features = [_conv_bn_relu6(3, cin, 3, 2)]
    for t, c, n, s in self.SETTING:
      cout = _make_divisible(c * width_mult)
      for i in range(n):
        features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
        cin = cout
    features.append(_conv_bn_relu6(cin, last, 1))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

  def forward(self, x):
    x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
    return self.classifier(torch.flatten(x, 1))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
  """Every weight and BN statistic drawn at random (He-scaled kernels; BN scales of both signs,
  non-zero means, variances in [0.3, 2]; PReLU slopes in [-0.5, 1.5]), then eval mode. Returns
  `model`."""
  rng = np.random.default_rng(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.Conv2d | nn.Linear):
        fan_in = module.weight[0].numel()
        w = rng.standard_normal(module.weight.shape) * np.sqrt(2.0 / fan_in)
        module.weight.copy_(torch.from_numpy(w))
        if module.bias is not None:
          module.bias.copy_(torch.from_numpy(0.1 * rng.standard_normal(module.bias.shape)))
      elif isinstance(module, nn.BatchNorm2d):
        shape = module.running_mean.shape
        if module.affine:  # statistics-only BNs (affine=False) have no scale and bias
          scale = rng.uniform(0.3, 1.2, shape) * np.where(rng.uniform(size=shape) < 0.8, 1, -1)
          module.weight.copy_(torch.from_numpy(scale))
          module.bias.copy_(torch.from_numpy(0.3 * rng.standard_normal(shape)))
        module.running_mean.copy_(torch.from_numpy(0.3 * rng.standard_normal(shape)))
        module.running_var.copy_(torch.from_numpy(rng.uniform(0.3, 2.0, shape)))
      elif isinstance(module, nn.PReLU):
        module.weight.copy_(torch.from_numpy(rng.uniform(-0.5, 1.5, module.weight.shape)))
  return model.eval()


def logits(model: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
  """`model`'s eval-mode output on NHWC inputs (transposed to torch's NCHW)."""
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()
