"""PyTorch twins of other code bases' networks, named as their checkpoints are: what the
`CODE:ARCH` layouts of `rmjax.interop.from_torch` are tested against.

Re-built from reading the module structure of the published RMNet code (github.com/fxmeng/RMNet:
models/resnet2vgg.py, rmnext.py, rmobilenet.py), the RepVGG code (github.com/DingXiaoH/RepVGG:
repvgg.py) and timm (timm/models/byobnet.py): the same parameter and buffer names and shapes and
the same eval-mode forward, in our own words. The deploy-time twins are the module chains those
codes' own conversions leave (`deploy()`, `switch_to_deploy`, `reparameterize`), holding random
weights: an import must compute what the file computes, however the file was made.
"""

import torch
from torch import nn

relu = nn.functional.relu
BN = nn.BatchNorm2d


def conv(cin, cout, k, stride=1, groups=1, bias=False):
  return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)


def _step(cin, cout, k, stride, bn, groups=1, act=nn.ReLU):
  """One step of a deployed network: conv, its BN if kept (else the conv has a bias), act."""
  c = conv(cin, cout, k, stride, groups, bias=not bn)
  return [c, BN(cout), act()] if bn else [c, act()]


def _head(cin, num_classes):
  return [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, num_classes)]


def _stride(stage, block):
  return 2 if stage > 0 and block == 0 else 1


# --- the RMNet code: models/resnet2vgg.py -----------------------------------------------------


class ResBlock(nn.Module):
  """A basic block, plus `running1`/`running2`: statistics-only BNs for the code's deploy()."""

  def __init__(self, cin, width, stride):
    super().__init__()
    self.conv1, self.bn1 = conv(cin, width, 3, stride), BN(width)
    self.conv2, self.bn2 = conv(width, width, 3), BN(width)
    self.downsample = nn.Sequential()  # the identity, with no keys
    if stride != 1 or cin != width:
      self.downsample = nn.Sequential(conv(cin, width, 1, stride), BN(width))
    self.running1 = BN(cin, affine=False)
    self.running2 = BN(width, affine=False)

  def forward(self, x):
    y = relu(self.bn1(self.conv1(x)))
    return relu(self.bn2(self.conv2(y)) + self.downsample(x))


class RMNet(nn.Module):
  """`rmnet18` ... `rmnet110`: stage i is `base * 2**i` wide; ImageNet's stem (7x7 stride 2,
  max-pool) for 1000 classes, else a 3x3 stride-1 conv."""

  def __init__(self, stage_sizes, base, num_classes):
    super().__init__()
    self.imagenet = num_classes == 1000
    self.conv1 = conv(3, base, 7, 2) if self.imagenet else conv(3, base, 3)
    self.bn1 = BN(base)
    cin = base
    for i, size in enumerate(stage_sizes):
      width, blocks = base * 2**i, []
      for j in range(size):
        blocks.append(ResBlock(cin, width, _stride(i, j)))
        cin = width
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.num_stages = len(stage_sizes)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = relu(self.bn1(self.conv1(x)))
    if self.imagenet:
      x = nn.functional.max_pool2d(x, 3, 2, 1)
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return self.fc(x.mean((2, 3)))


def deployed_rmnet(stage_sizes, base, num_classes, bn):
  """RMNet after `deploy(merge_bn=not bn)`: one Sequential. The stem conv (its BN folded) +
  ReLU [+ max-pool]; per block two 3x3 steps, the first `in + width` wide; pool, flatten, fc."""
  imagenet = num_classes == 1000
  mods = _step(3, base, 7 if imagenet else 3, 2 if imagenet else 1, bn=False)
  if imagenet:
    mods.append(nn.MaxPool2d(3, 2, 1))
  cin = base
  for i, size in enumerate(stage_sizes):
    width = base * 2**i
    for j in range(size):
      mods += _step(cin, cin + width, 3, _stride(i, j), bn) + _step(cin + width, width, 3, 1, bn)
      cin = width
  return nn.Sequential(*mods, *_head(cin, num_classes))


# --- the RMNet code: models/rmnext.py ----------------------------------------------------------


class RepBlock(nn.Module):
  """relu(BN(3x3 conv) + BN(1x1 conv) [+ BN(x)]): RMNeXt's stem block (no identity) and
  RMRep's block (an identity BN `bn00` where `cin == cout` and the stride is 1)."""

  def __init__(self, cin, cout, stride, identity=False):
    super().__init__()
    self.conv33, self.bn33 = conv(cin, cout, 3, stride), BN(cout)
    self.conv11, self.bn11 = conv(cin, cout, 1, stride), BN(cout)
    if identity and cin == cout and stride == 1:
      self.bn00 = BN(cout)

  def forward(self, x):
    y = self.bn33(self.conv33(x)) + self.bn11(self.conv11(x))
    return relu(y + self.bn00(x) if hasattr(self, "bn00") else y)


class RMBlock(nn.Module):
  """1x1 up to `cout * (expansion - 1)`, grouped 3x3 (`cpg` channels per group, the stride),
  1x1 down, a residual; `running1`/`running2` as in ResBlock."""

  def __init__(self, cin, cout, stride, expansion, cpg):
    super().__init__()
    mid = cout * (expansion - 1)
    self.conv1, self.bn1 = conv(cin, mid, 1), BN(mid)
    self.conv2, self.bn2 = conv(mid, mid, 3, stride, groups=mid // cpg), BN(mid)
    self.conv3, self.bn3 = conv(mid, cout, 1), BN(cout)
    self.downsample = nn.Sequential()
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(conv(cin, cout, 1, stride), BN(cout))
    self.running1, self.running2 = BN(cin, affine=False), BN(cout, affine=False)

  def forward(self, x):
    y = relu(self.bn1(self.conv1(x)))
    y = relu(self.bn2(self.conv2(y)))
    return relu(self.bn3(self.conv3(y)) + self.downsample(x))


class RMNeXt(nn.Module):
  """`layer0`: two stride-2 RepBlocks for 1000 classes, else one stride-1 RepBlock; stage i has
  width `64 * 2**i` and `cpg * 2**i` channels per group."""

  def __init__(self, stage_sizes, expansion, cpg, num_classes, base=64):
    super().__init__()
    stem = min(64, base)
    if num_classes == 1000:
      self.layer0 = nn.Sequential(RepBlock(3, stem, 2), RepBlock(stem, stem, 2))
    else:
      self.layer0 = RepBlock(3, stem, 1)
    cin = stem
    for i, size in enumerate(stage_sizes):
      width, blocks = base * 2**i, []
      for j in range(size):
        blocks.append(RMBlock(cin, width, _stride(i, j), expansion, cpg * 2**i))
        cin = width
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.layer0(x)
    for i in range(4):
      x = getattr(self, f"layer{i + 1}")(x)
    return self.fc(x.mean((2, 3)))


def deployed_rmnext(stage_sizes, expansion, cpg, num_classes, bn, base=64):
  """RMNeXt after `deploy(merge_bn=not bn)`: each RepBlock one biased 3x3 step; each RMBlock
  three steps `mid + in` wide (the grouped one with groups of `cpg * 2**i`); pool, flatten, fc."""
  stem = min(64, base)
  mods, cin = [], 3
  for stride in (2, 2) if num_classes == 1000 else (1,):
    mods += _step(cin, stem, 3, stride, bn=False)
    cin = stem
  for i, size in enumerate(stage_sizes):
    width = base * 2**i
    for j in range(size):
      mid = width * (expansion - 1) + cin
      mods += _step(cin, mid, 1, 1, bn)
      mods += _step(mid, mid, 3, _stride(i, j), bn, groups=mid // (cpg * 2**i))
      mods += _step(mid, width, 1, 1, bn)
      cin = width
  return nn.Sequential(*mods, *_head(cin, num_classes))


# --- the RMNet code: models/rmrepvgg.py --------------------------------------------------------


class RMRepBlock(nn.Module):
  """Passes its first `int(planes * ratio)` channels through, computes the others as a
  RepBlock with identity would, ReLU over all."""

  def __init__(self, planes, ratio):
    super().__init__()
    self.reserved = int(planes * ratio)
    c = planes - self.reserved
    self.conv33, self.bn33 = conv(planes, c, 3), BN(c)
    self.conv11, self.bn11 = conv(planes, c, 1), BN(c)
    self.bn00 = BN(c)

  def forward(self, x):
    r = self.reserved
    y = self.bn33(self.conv33(x)) + self.bn11(self.conv11(x)) + self.bn00(x[:, r:])
    return relu(torch.cat([x[:, :r], y], 1))


def _rmrep_blocks(depth, num_classes):
  """RMRep as (kind, in, out, stride): for 1000 classes two stride-2 blocks (stem, stage 1's
  first), else one stride-1 stem block; `depth` (RMBlock, RepBlock) pairs; then per stage a
  stride-2 block and `depth` pairs."""
  if num_classes == 1000:
    blocks = [("rep", 3, 64, 2), ("rep", 64, 64, 2)]
  else:
    blocks = [("rep", 3, 64, 1)]
  for i, width in enumerate((64, 128, 256, 512)):
    if i:
      blocks.append(("rep", width // 2, width, 2))
    blocks += [("rm", width, width, 1), ("rep", width, width, 1)] * depth
  return blocks


class RMRep(nn.Module):
  """`rmrep_21` (depth 2, ratio 0.25) ...: `feature`, one Sequential of every block; `fc`."""

  def __init__(self, depth, ratio, num_classes):
    super().__init__()
    blocks = [
      RMRepBlock(cout, ratio) if kind == "rm" else RepBlock(cin, cout, s, identity=True)
      for kind, cin, cout, s in _rmrep_blocks(depth, num_classes)
    ]
    self.feature = nn.Sequential(*blocks)
    self.fc = nn.Linear(512, num_classes)

  def forward(self, x):
    return self.fc(self.feature(x).mean((2, 3)))


def deployed_rmrep(depth, num_classes):
  """RMRep after `deploy()`: a biased 3x3 conv + ReLU per block; pool, flatten, fc."""
  mods = []
  for _, cin, cout, s in _rmrep_blocks(depth, num_classes):
    mods += _step(cin, cout, 3, s, bn=False)
  return nn.Sequential(*mods, *_head(512, num_classes))


# --- the RMNet code: models/rmobilenet.py ------------------------------------------------------

# (stem width, first block's output width, (t, c, n, s) setting, last width, t_free); the code
# gives every one of an entry's n blocks the stride s.
MOBILENETV2_IMAGENET = (
  32,
  16,
  [(6, 24, 1, 2), (6, 24, 1, 1), (6, 32, 1, 2), (6, 32, 2, 1), (6, 64, 1, 2), (6, 64, 3, 1)]
  + [(6, 96, 1, 1), (6, 96, 2, 1), (6, 160, 1, 2), (6, 160, 2, 1), (6, 320, 1, 1)],
  1280,
  1,
)
MOBILENETV1_CIFAR = (
  32,
  32,
  [(2, 32, 1, 2), (3, 32, 1, 1), (4, 64, 1, 2), (3, 64, 1, 1), (4, 128, 1, 2), (3, 128, 5, 1)]
  + [(4, 256, 1, 2), (3, 256, 1, 1)],
  1024,
  8,
)


class InvertedResidual(nn.Module):
  """`conv` is one flat Sequential; outputs are `cout * free` wide and a block with stride 1
  and `cin == cout` adds its input's first `cin` channels to its output's."""

  def __init__(self, cin, cout, stride, t, free):
    super().__init__()
    hidden = round(cin * t)
    self.carried = cin if stride == 1 and cin == cout else 0
    self.conv = nn.Sequential(
      *_step(cin * free, hidden, 1, 1, True, act=nn.ReLU6),
      *_step(hidden, hidden, 3, stride, True, groups=hidden, act=nn.ReLU6),
      *_step(hidden, cout * free, 1, 1, True)[:2],
    )
    if self.carried:
      self.running1, self.running2 = BN(cin, affine=False), BN(cin * free, affine=False)

  def forward(self, x):
    y, c = self.conv(x), self.carried
    return torch.cat([y[:, :c] + x[:, :c], y[:, c:]], 1) if c else y


class MobileNet(nn.Module):
  """`features` (a Sequential), the spatial mean, `classifier` (dropout, linear)."""

  def __init__(self, features, last, num_classes):
    super().__init__()
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

  def forward(self, x):
    return self.classifier(self.features(x).mean((2, 3)))


def rmobilenet(spec, num_classes):
  """RMobileNet (`mobilenetv2_imagenet`, `mobilenetv1_cifar`): stem stride 2 for 1000 classes."""
  stem, first, setting, last, free = spec
  features = [
    nn.Sequential(*_step(3, stem, 3, 2 if num_classes == 1000 else 1, True, act=nn.ReLU6)),
    nn.Sequential(
      *_step(stem, stem, 3, 1, True, groups=stem, act=nn.ReLU6),
      *_step(stem, first * free, 1, 1, True)[:2],
    ),
  ]
  cin = first
  for t, c, n, s in setting:
    for _ in range(n):
      features.append(InvertedResidual(cin, c, s, t, free))
      cin = c
  features.append(nn.Sequential(*_step(cin * free, last, 1, 1, True, act=nn.ReLU6)))
  return MobileNet(features, last, num_classes)


def deployed_rmobilenet(spec, num_classes):
  """RMobileNet after `deploy()`: every conv, BN, ReLU6 and PReLU of `features` in one
  Sequential; blocks with a shortcut carry their `cin` channels first through PReLUs; then each
  (conv, BN, conv, BN) run fused into a bias-free 1x1 conv and the second BN."""
  stem, first, setting, last, free = spec
  mods = _step(3, stem, 3, 2 if num_classes == 1000 else 1, True, act=nn.ReLU6)
  mods += _step(stem, stem, 3, 1, True, groups=stem, act=nn.ReLU6)
  mods += _step(stem, first * free, 1, 1, True)[:2]
  cin = first
  for t, c, n, s in setting:
    for _ in range(n):
      carried = cin if s == 1 and cin == c else 0
      mid = round(cin * t) + carried

      def act(mid=mid, carried=carried):
        return nn.PReLU(mid) if carried else nn.ReLU6()

      mods += _step(cin * free, mid, 1, 1, True, act=act)
      mods += _step(mid, mid, 3, s, True, groups=mid, act=act)
      mods += _step(mid, c * free, 1, 1, True)[:2]
      cin = c
  mods += _step(cin * free, last, 1, 1, True, act=nn.ReLU6)
  fused, i = [], 0
  while i < len(mods):
    run = mods[i : i + 4]
    if [type(m) for m in run] == [nn.Conv2d, BN, nn.Conv2d, BN]:
      fused += [nn.Conv2d(run[0].in_channels, run[2].out_channels, 1, bias=False), run[3]]
      i += 4
    else:
      fused.append(mods[i])
      i += 1
  return MobileNet(fused, last, num_classes)


# --- RepVGG: the RepVGG code's repvgg.py and timm's byobnet.py ---------------------------------

A_SIZES, B_SIZES = (2, 4, 14, 1), (4, 6, 16, 1)


class ConvBN(nn.Module):
  """A conv and its BN as submodules `conv` and `bn` (both codes' conv_bn / ConvNormAct)."""

  def __init__(self, cin, cout, k, stride, groups):
    super().__init__()
    self.conv, self.bn = conv(cin, cout, k, stride, groups), BN(cout)

  def forward(self, x):
    return self.bn(self.conv(x))


class RepVGGBlock(nn.Module):
  """relu(3x3 ConvBN + 1x1 ConvBN + identity BN where shapes allow), or deployed, one biased
  3x3 conv + ReLU. `names`: the code base's (3x3, 1x1, identity, deployed) submodule names."""

  def __init__(self, cin, cout, stride, groups, deploy, names):
    super().__init__()
    self.names = names
    dense, pointwise, identity, reparam = names
    if deploy:
      setattr(self, reparam, conv(cin, cout, 3, stride, groups, bias=True))
      return
    setattr(self, dense, ConvBN(cin, cout, 3, stride, groups))
    setattr(self, pointwise, ConvBN(cin, cout, 1, stride, groups))
    setattr(self, identity, BN(cin) if cin == cout and stride == 1 else None)

  def forward(self, x):
    dense, pointwise, identity, reparam = (getattr(self, n, None) for n in self.names)
    if reparam is not None:
      return relu(reparam(x))
    y = dense(x) + pointwise(x)
    return relu(y if identity is None else y + identity(x))


DING_NAMES = ("rbr_dense", "rbr_1x1", "rbr_identity", "rbr_reparam")
TIMM_NAMES = ("conv_kxk", "conv_1x1", "identity", "reparam_conv")


def _repvgg_widths(multipliers):
  return min(64, int(64 * multipliers[0])), [
    int(base * m) for base, m in zip((64, 128, 256, 512), multipliers, strict=True)
  ]


class DingRepVGG(nn.Module):
  """The RepVGG code's RepVGG: `stage0`, `stage1`...`stage4` (ModuleLists), `linear`; groups
  by layer index (`stage0` is 0), from `groups_by_layer`."""

  def __init__(self, stage_sizes, multipliers, groups_by_layer, num_classes, deploy=False):
    super().__init__()
    stem, widths = _repvgg_widths(multipliers)
    self.stage0 = RepVGGBlock(3, stem, 2, 1, deploy, DING_NAMES)
    cin, layer = stem, 1
    for i, (size, width) in enumerate(zip(stage_sizes, widths, strict=True)):
      blocks = []
      for j in range(size):
        groups = groups_by_layer.get(layer, 1)
        blocks.append(RepVGGBlock(cin, width, 2 if j == 0 else 1, groups, deploy, DING_NAMES))
        cin, layer = width, layer + 1
      setattr(self, f"stage{i + 1}", nn.ModuleList(blocks))
    self.linear = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.stage0(x)
    for i in range(4):
      for block in getattr(self, f"stage{i + 1}"):
        x = block(x)
    return self.linear(x.mean((2, 3)))


class TimmHead(nn.Module):
  def __init__(self, cin, num_classes):
    super().__init__()
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.fc(x.mean((2, 3)))


class TimmRepVGG(nn.Module):
  """timm's ByobNet for RepVGG: `stem`, `stages` (Sequential of Sequentials), `head.fc`;
  `groups` on every odd block of a stage."""

  def __init__(self, stage_sizes, multipliers, groups, num_classes, deploy=False):
    super().__init__()
    stem, widths = _repvgg_widths(multipliers)
    self.stem = RepVGGBlock(3, stem, 2, 1, deploy, TIMM_NAMES)
    stages, cin = [], stem
    for size, width in zip(stage_sizes, widths, strict=True):
      blocks = []
      for j in range(size):
        g = groups if groups and j % 2 == 1 else 1
        blocks.append(RepVGGBlock(cin, width, 2 if j == 0 else 1, g, deploy, TIMM_NAMES))
        cin = width
      stages.append(nn.Sequential(*blocks))
    self.stages = nn.Sequential(*stages)
    self.head = TimmHead(cin, num_classes)

  def forward(self, x):
    return self.head(self.stages(self.stem(x)))
