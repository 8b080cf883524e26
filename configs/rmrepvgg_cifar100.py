"""RepVGG-69 with the RM operation (reserving ratio 0.5) on CIFAR-100 (Sec. 5.2, Fig. 8).

The paper's Fig. 8 finds 25% best for RepVGG-21/37, 50% for RepVGG-69 and 75% for RepVGG-133;
ratio 0 is plain RepVGG. Sweep with e.g. `--config.model=repvgg133
--config.model_kwargs.reserve_ratio=0.75`. Deployed, every ratio gives the same network: a stack
of 3x3 conv + ReLU. Recipe: the paper's CIFAR one (Sec. 3).

  python train.py --config configs/rmrepvgg_cifar100.py
"""

from configs import resnet18_cifar100


def get_config():
  config = resnet18_cifar100.get_config()
  config.model = "repvgg69"
  config.model_kwargs.reserve_ratio = 0.5
  config.compare_plain = True
  return config
