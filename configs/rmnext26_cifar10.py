"""RMNeXt 26x3_32 on CIFAR-10 (Sec. 5.4, Table 3: 95.81%; its deployed form is Table 4).

The paper's CIFAR recipe (Sec. 3): batch 256, SGD lr 0.1, momentum 0.9, weight decay 5e-4,
200 epochs, lr x 0.1 every 60 epochs; pad-4 crop + flip.

  python train.py --config configs/rmnext26_cifar10.py
"""

from configs import resnet18_cifar10


def get_config():
  config = resnet18_cifar10.get_config()
  config.model = "rmnext26x3_32"
  return config
