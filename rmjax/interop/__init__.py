"""Bring your own weights: PyTorch and Keras models as rmjax variables.

  >>> from rmjax import interop, transforms
  >>> model, variables = interop.from_torch("resnet50", "resnet50.pth")   # torchvision layout
  >>> model, variables = interop.from_torch("rmnet:resnet18", "rmnet18.pth")  # the RMNet code's
  >>> model, variables = interop.from_keras("mobilenet_v2.keras")         # or .h5
  >>> plain, plain_vars = transforms.rm_convert(model, variables)         # same logits

Supported: ResNet-18/34/50/101/152 and MobileNetV2 from PyTorch in torchvision's layout;
`CODE:ARCH` layouts of other code bases (TORCH_LAYOUTS): the published RMNet code's ResNets,
RMNeXts and MobileNets, the RepVGG code's and timm's RepVGGs, train-time or deploy-time (a
deploy-time file imports as a `PlainNet`) — a state dict, `.pth`/`.pt` or `.safetensors`;
MobileNetV2 from Keras (`.h5` or `.keras`). Weights that do not fit raise
`WeightImportError` naming every missing key, wrong shape, unexpected key and unsupported
layer at once. torch, safetensors and h5py are imported only when a file needs them
(`pip install 'rmjax[interop]'`); `python convert.py --from_torch/--from_keras` is the CLI.
"""

from rmjax.interop.keras_weights import from_keras, import_keras, read_keras
from rmjax.interop.torch_layouts import LAYOUTS as TORCH_LAYOUTS
from rmjax.interop.torch_layouts import from_torch, import_torch
from rmjax.interop.torchvision_weights import ARCHITECTURES as TORCH_ARCHITECTURES
from rmjax.interop.torchvision_weights import load_state_dict
from rmjax.interop.weights import Imported, WeightImportError

__all__ = [
  "Imported",
  "TORCH_ARCHITECTURES",
  "TORCH_LAYOUTS",
  "WeightImportError",
  "from_keras",
  "from_torch",
  "import_keras",
  "import_torch",
  "load_state_dict",
  "read_keras",
]
