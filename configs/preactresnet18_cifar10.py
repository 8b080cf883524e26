"""Pre-activation ResNet-18 (He et al. 2016, CIFAR stem) on CIFAR-10 with the paper's recipe.

The RMNet authors' `preactresnet2vgg.py` converts this network (their PreActResVGG-18, CIFAR-10);
they publish no number for it. Recipe of the paper's Sec. 3: batch 256, SGD lr 0.1, momentum
0.9, weight decay 5e-4, 200 epochs, lr x 0.1 every 60 epochs; pad-4 crop + flip. RM converts it
exactly (`rmjax.transforms.preact`): `python convert.py workdirs/preactresnet18_cifar10 PLAIN`.

  python train.py --config configs/preactresnet18_cifar10.py
"""

from configs import resnet18_cifar10


def get_config():
  config = resnet18_cifar10.get_config()
  config.model = "preactresnet18"
  return config
