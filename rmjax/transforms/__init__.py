"""rmjax.transforms: pure functions over variable pytrees that remove residual connections.

The research API. Everything here takes arrays/dicts and returns new ones; nothing holds state,
does I/O or draws random numbers, and all of it traces under `jax.jit` (architecture decisions
come from static model fields, never from array values).

  >>> from rmjax import models, transforms
  >>> model = models.create("resnet50", num_classes=1000, stem="imagenet")
  >>> variables = model.init(jax.random.key(0), x, train=False)
  >>> plain, plain_vars = transforms.rm_convert(model, variables)        # deploy form
  >>> plain.apply(plain_vars, x)            # == model.apply(variables, x, train=False)

Building blocks, by the paper's steps:
  fold_batchnorm      fold a BN into the conv before it
  dirac_kernel        identity convolution kernels (Eq. 2)
  identity_batchnorm  a BN that passes its input unchanged (Eq. 3)
  reserve             extend a first conv with Dirac output channels (Sec. 4.1)
  reserve_grouped     carry reserved channels through a middle conv as Dirac groups
  merge               extend a last conv with shortcut input columns (Eq. 4, Appendix A.1 (b))
  fuse_pointwise      two consecutive 1x1 convs with no activation between -> one (Eq. 5)
  fuse_consecutive_pointwise   the same over a whole plain layer sequence (rm_convert's last step)
  repvgg_reparam      a RepVGG block's 3x3, 1x1 and identity branches -> one 3x3 conv (Eq. 1)
  rm_convert          the whole network, one registered converter per block type
  rm_convert_jit      the same, jitted (model and options static, variables traced)
  rm_convert_subtree  the same for a network whose variables are a sub-tree of a larger
                      module's (a detector's backbone): the plain variables go back in place
  prune               network slimming of a keep_bn plain network: drop channels whose |BN scale|
                      is below a threshold (Sec. 4.2, Fig. 4); not jittable (values pick shapes)
  prune_resnet        the ResNet baseline of Sec. 5.1: slimming with the residual connections in
                      place, block-inner channels only; returns a narrower ResNet
"""

# Importing the converter modules registers them.
from rmjax.transforms import mobilenet as _mobilenet_converters  # noqa: F401
from rmjax.transforms import preact as _preact_converters  # noqa: F401
from rmjax.transforms import repvgg as _repvgg_converters  # noqa: F401
from rmjax.transforms import resnet as _resnet_converters  # noqa: F401
from rmjax.transforms import rmnext as _rmnext_converters  # noqa: F401
from rmjax.transforms import se as _se_converters  # noqa: F401
from rmjax.transforms.batchnorm import fold_batchnorm, identity_batchnorm
from rmjax.transforms.convert import (
  Emitted,
  Options,
  check_variables,
  convertible_blocks,
  fuse_consecutive_pointwise,
  register_converter,
  rm_convert,
  rm_convert_jit,
)
from rmjax.transforms.dirac import dirac_kernel, grouped_to_dense, pad_kernel
from rmjax.transforms.fuse import fuse_pointwise
from rmjax.transforms.prune import prune
from rmjax.transforms.prune_resnet import prune_resnet
from rmjax.transforms.repvgg import repvgg_reparam
from rmjax.transforms.rm import merge, reserve, reserve_grouped
from rmjax.transforms.subtree import replace_subtree, rm_convert_subtree, subtree

__all__ = [
  "Emitted",
  "Options",
  "check_variables",
  "convertible_blocks",
  "dirac_kernel",
  "fold_batchnorm",
  "fuse_consecutive_pointwise",
  "fuse_pointwise",
  "grouped_to_dense",
  "identity_batchnorm",
  "merge",
  "pad_kernel",
  "prune",
  "prune_resnet",
  "register_converter",
  "replace_subtree",
  "repvgg_reparam",
  "reserve",
  "reserve_grouped",
  "rm_convert",
  "rm_convert_jit",
  "rm_convert_subtree",
  "subtree",
]
