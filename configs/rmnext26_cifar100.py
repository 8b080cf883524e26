"""RMNeXt 26x3_32 on CIFAR-100 (Sec. 5.4, Table 3: 79.16%), the paper's CIFAR recipe.

python train.py --config configs/rmnext26_cifar100.py
"""

from configs import rmnext26_cifar10


def get_config():
  config = rmnext26_cifar10.get_config()
  config.dataset = "cifar100"
  return config
