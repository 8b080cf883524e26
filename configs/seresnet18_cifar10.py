"""SE-ResNet-18 (Hu et al. 2018, CIFAR stem, reduction 16) on CIFAR-10, the paper's recipe.

Squeeze-and-excitation on each block's branch before the sum; RM converts it exactly
(`rmjax.transforms.se`). Recipe of the paper's Sec. 3: batch 256, SGD lr 0.1, momentum 0.9,
weight decay 5e-4, 200 epochs, lr x 0.1 every 60 epochs; pad-4 crop + flip.

  python train.py --config configs/seresnet18_cifar10.py
"""

from configs import resnet18_cifar10


def get_config():
  config = resnet18_cifar10.get_config()
  config.model = "seresnet18"
  return config
