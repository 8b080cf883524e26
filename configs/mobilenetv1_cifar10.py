"""MobileNetV1 trained from scratch on CIFAR-10: the baseline of the paper's Table 2 (91.31%).

Same recipe as `configs/mobilenetv2_to_v1_cifar10.py`, whose converted network has exactly
this architecture (activation ReLU, as the paper's Fig. 6).

  python train.py --config configs/mobilenetv1_cifar10.py
"""

from configs import mobilenetv2_to_v1_cifar10


def get_config():
  config = mobilenetv2_to_v1_cifar10.get_config()
  config.model = "mobilenetv1"
  config.model_kwargs.activation = "relu"
  config.compare_plain = False
  return config
