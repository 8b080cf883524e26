"""RMNeXt 50x6_32 on ImageNet: the paper's headline network (Sec. 5.4, Table 3: 79.57% top-1).

The recipe follows the official RepVGG training the paper uses for ImageNet: batch 256, SGD
momentum 0.9, lr 0.1 with cosine decay, weight decay 1e-4, 120 epochs, 5 warm-up epochs,
RandomResizedCrop 224 + flip, label smoothing 0.1. Other presets of Table 3:
`--config.model=rmnext41x4_8` (77.80%), `rmnext41x5_16` (78.5%), `rmnext50x5_32` (79.08%),
`rmnext101x6_16` (80.07%), `rmnext152x6_32` (80.36%). ImageNet must be prepared once with tfds's
manual download (the error message says where the files go); `--config.dataset=...` trains on
anything else.

  python train.py --config configs/rmnext50.py
"""

from configs import resnet50_imagenet


def get_config():
  config = resnet50_imagenet.get_config()  # ImageNet data, batch 256, weight decay 1e-4
  config.model = "rmnext50x6_32"
  config.num_epochs = 120.0
  config.learning_rate = 0.1
  config.lr_schedule = "cosine"
  config.warmup_epochs = 5.0
  config.label_smoothing = 0.1
  return config
