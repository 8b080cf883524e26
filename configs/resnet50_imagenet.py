"""ResNet-50 on ImageNet (ILSVRC 2012), the standard recipe, 224x224 crops.

Batch 256, SGD lr 0.1 (x batch/256), momentum 0.9, weight decay 1e-4, 90 epochs, lr x 0.1 every
30 epochs; RandomResizedCrop + flip for training, resize 256 + centre crop 224 for eval. The
paper reports 76.31% top-1 for ResNet-50 (Table 3). ImageNet must be prepared once with tfds's
manual download (the error message says where the files go).

  python train.py --config configs/resnet50_imagenet.py
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet50"
  config.model_kwargs.stem = "imagenet"
  config.dataset = "imagenet2012"
  config.image_size = 224
  config.batch_size = 256
  config.num_epochs = 90.0
  config.learning_rate = 0.1 * config.batch_size / 256
  config.weight_decay = 1e-4
  config.lr_schedule = "step"
  config.lr_decay_epochs = 30.0
  config.lr_decay_factor = 0.1
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  return config
