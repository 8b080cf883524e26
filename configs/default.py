"""Defaults every config starts from. Not meant to be trained as is; see the other configs."""

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()
  # Model: any name of rmjax.models.names(); model_kwargs go to models.create (e.g. stem).
  config.model = "resnet20"
  config.model_kwargs = ml_collections.ConfigDict()
  # Fine-tuning (Appendix A.2): a PLAIN directory written by `convert.py --keep_bn` (or
  # rm_convert(..., keep_bn=True) + rmjax.save_plain). Non-empty: the model is that plain
  # network (model and model_kwargs are ignored) and a fresh run starts from its weights, the
  # reserved channels' BN statistics re-estimated on init_bn_batches training batches (0: kept
  # as converted). A deploy-form PLAIN (no BN) also works. Resuming restores the workdir's
  # checkpoint; the PLAIN must stay in place, its plain.json gives the architecture.
  config.init_from = ""
  config.init_bn_batches = 10
  # Data: one of rmjax.data.DATASETS; data_dir defaults to tfds's (~/tensorflow_datasets).
  config.dataset = "fashion_mnist_small"
  config.data_dir = config_dict.placeholder(str)
  config.image_size = config_dict.placeholder(int)  # None: the dataset's own size
  config.augment = True  # crop + flip (ImageNet: RandomResizedCrop + flip); False: none
  # Optimisation: SGD + momentum, L2 weight decay on all parameters (PyTorch semantics).
  config.batch_size = 128  # global, over all devices and processes
  config.num_epochs = 10.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4
  # Network slimming (Sec. 4.2, 5.1): L1 on every BN scale, the paper uses 1e-4 ... 1e-3.
  # 0 = off. Prune afterwards with `python prune.py` on a `convert.py --keep_bn` output.
  config.sparsity = 0.0
  config.lr_schedule = "cosine"  # "step" | "cosine" | "constant"
  config.lr_decay_epochs = 60.0  # "step": multiply by lr_decay_factor every this many epochs
  config.lr_decay_factor = 0.1
  config.warmup_epochs = 0.0
  config.label_smoothing = 0.0
  # Bookkeeping.
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.eval_every_epochs = 1.0
  config.seed = 0
  # After training: convert with rm_convert and print original vs plain side by side.
  config.compare_plain = False
  return config
