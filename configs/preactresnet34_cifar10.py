"""Pre-activation ResNet-34 (He et al. 2016, CIFAR stem) on CIFAR-10 with the paper's recipe.

The RMNet authors' PreActResVGG-34 (`preactresnet2vgg.py`, CIFAR-10); no published number. For
reference the paper reports 95.64% for the post-activation ResNet-34 on CIFAR-10 (Table 3).
Recipe: see configs/preactresnet18_cifar10.py.

  python train.py --config configs/preactresnet34_cifar10.py
"""

from configs import resnet18_cifar10


def get_config():
  config = resnet18_cifar10.get_config()
  config.model = "preactresnet34"
  return config
