"""The paper's re-designed MobileNetV2 on CIFAR-10 (Sec. 5.3, Table 2: 92.07%, 83.4M FLOPs).

Converted after training, it is MobileNetV1 exactly (RMNetV1, 47.1M FLOPs); train
`configs/mobilenetv1_cifar10.py` for the paper's comparison (MobileNetV1 from scratch: 91.31%).
The paper's CIFAR recipe (Sec. 3): batch 256, SGD lr 0.1, momentum 0.9, weight decay 5e-4,
200 epochs, lr x 0.1 every 60 epochs. `compare_plain` reports both networks' accuracy and speed
at the end.

  python train.py --config configs/mobilenetv2_to_v1_cifar10.py
  python train.py --config configs/mobilenetv2_to_v1_cifar10.py --config.dataset=cifar100
"""

from configs import resnet18_cifar10


def get_config():
  config = resnet18_cifar10.get_config()
  config.model = "mobilenetv2_to_v1"
  config.model_kwargs.width = 1.0
  config.model_kwargs.activation = "relu"
  config.compare_plain = True
  return config
