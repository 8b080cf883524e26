"""ResNet-18 (CIFAR stem) on CIFAR-100 with the paper's recipe (Sec. 3).

Batch 256, SGD lr 0.1, momentum 0.9, weight decay 5e-4, 200 epochs, lr x 0.1 every 60 epochs.
For reference the paper reports 78.61% for ResNet-34 on CIFAR-100 (Table 3) and 79.57% for
ResNet-133 (Sec. 3).

  python train.py --config configs/resnet18_cifar100.py
"""

from configs import resnet18_cifar10


def get_config():
  config = resnet18_cifar10.get_config()
  config.dataset = "cifar100"
  return config
