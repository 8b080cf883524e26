"""torchvision state dicts written out by hand as NumPy arrays: torchvision's names and shapes,
random values, no torch needed."""

import numpy as np


def _conv(sd, rng, name, cout, cin, k):
  sd[f"{name}.weight"] = (
    rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))
  ).astype(np.float32)


def _bn(sd, rng, name, c):
  sd[f"{name}.weight"] = rng.uniform(0.3, 1.2, c).astype(np.float32)
  sd[f"{name}.bias"] = (0.3 * rng.standard_normal(c)).astype(np.float32)
  sd[f"{name}.running_mean"] = (0.3 * rng.standard_normal(c)).astype(np.float32)
  sd[f"{name}.running_var"] = rng.uniform(0.3, 2.0, c).astype(np.float32)
  sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)


def numpy_resnet18(num_classes=10, seed=0):
  """torchvision's ResNet-18 state dict, written out by hand, as NumPy arrays (no torch)."""
  rng, sd = np.random.default_rng(seed), {}
  _conv(sd, rng, "conv1", 64, 3, 7)
  _bn(sd, rng, "bn1", 64)
  cin = 64
  for stage, width in enumerate((64, 128, 256, 512), start=1):
    for j in range(2):
      p = f"layer{stage}.{j}"
      _conv(sd, rng, f"{p}.conv1", width, cin, 3)
      _bn(sd, rng, f"{p}.bn1", width)
      _conv(sd, rng, f"{p}.conv2", width, width, 3)
      _bn(sd, rng, f"{p}.bn2", width)
      if cin != width:
        _conv(sd, rng, f"{p}.downsample.0", width, cin, 1)
        _bn(sd, rng, f"{p}.downsample.1", width)
      cin = width
  sd["fc.weight"] = rng.standard_normal((num_classes, 512)).astype(np.float32)
  sd["fc.bias"] = rng.standard_normal(num_classes).astype(np.float32)
  return sd
