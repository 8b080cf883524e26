"""The embedded default: ResNet-20 on the Fashion-MNIST subset shipped with rmjax.

Runs offline on a fresh machine (10,000 training / 2,000 test images, 32x32 grey), then converts
the trained network with rm_convert and prints original vs plain test accuracy, the max logit
difference and imgs/s side by side. Target: >= 85% test accuracy within 10 minutes on 2 CPU cores.

  python train.py --config configs/demo.py        # or: make demo
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet20"
  config.dataset = "fashion_mnist_small"
  config.batch_size = 128
  config.num_epochs = 4.0
  # Four epochs are too short for crop + flip to pay off (measured: 81.5% with, 85%+ without).
  config.augment = False
  config.eval_every_epochs = 4.0  # once, at the end: evaluation costs as much as 15 steps
  config.learning_rate = 0.1
  config.weight_decay = 5e-4
  config.lr_schedule = "cosine"
  config.log_every_steps = 20
  config.checkpoint_every_steps = 200
  config.compare_plain = True
  return config
