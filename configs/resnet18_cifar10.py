"""ResNet-18 (CIFAR stem) on CIFAR-10 with the paper's recipe (Sec. 3).

Batch 256, SGD lr 0.1, momentum 0.9, weight decay 5e-4, 200 epochs, lr x 0.1 every 60 epochs.
The paper plots ResNet-18 in Fig. 2/10 without a number in the text; for reference it reports
95.64% for ResNet-34 on CIFAR-10 (Table 3).

  python train.py --config configs/resnet18_cifar10.py
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet18"
  config.model_kwargs.stem = "cifar"
  config.dataset = "cifar10"
  config.batch_size = 256
  config.num_epochs = 200.0
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.lr_schedule = "step"
  config.lr_decay_epochs = 60.0
  config.lr_decay_factor = 0.1
  config.checkpoint_every_steps = 2000
  return config
