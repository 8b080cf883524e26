"""Fig. 4 and Fig. 7 in miniature: slim ResNet-20 through RM vs as a ResNet, on the embedded data.

Sparsity training (network slimming's L1 on BN scales, plus a BN on every identity shortcut so
the channels RM reserves get a score too), RM conversion, pruning at each threshold, and the same
fine-tuning budget for the pruned RMNet and the pruned ResNet (`rmjax.slimming`). Runs offline.

  python slim.py --config configs/slim_resnet20.py                       # workdirs/slim_resnet20
  python slim.py --config configs/slim_resnet20.py --report_dir docs     # docs/pruning.md + .png

A 4-epoch run cannot move BN scales as far as the paper's 200 epochs at sparsity 1e-4 ... 1e-3,
so the L1 factor is larger here and the thresholds sit above the paper's 5e-4 ... 5e-3: the total
push on a scale is the factor times the summed learning rate (~0.05 x 312 steps here, ~0.05 x
78,000 for 200 CIFAR epochs at batch 128).
"""

import ml_collections

from configs import demo


def get_config():
  config = demo.get_config()  # ResNet-20 on fashion_mnist_small, 4 epochs
  config.model_kwargs.shortcut_bn = True
  config.sparsity = 1e-2
  config.compare_plain = False
  config.prune = ml_collections.ConfigDict()
  config.prune.thresholds = (0.01, 0.05, 0.1)
  # Fine-tuning after pruning: the same budget for the pruned RMNet and the pruned ResNet.
  config.prune.finetune_epochs = 2.0
  config.prune.finetune_learning_rate = 0.01
  config.prune.speed_batch_size = 128  # the paper times batches of 128 (Sec. 5)
  return config
