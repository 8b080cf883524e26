"""rmjax models in Flax NNX code: wrap, convert, swap in the plain network.

rmjax models are linen modules; `flax.nnx.bridge.ToNNX` makes one an NNX module (its variables
become NNX state: `nnx.Param` for `params`, `nnx.BatchStat` for `batch_stats`, at the linen
paths). RM works on linen-style variables, so converting an NNX-held model reads them back out
of the NNX state, converts, and wraps the plain network the same way:

  >>> backbone = nnx.bridge.ToNNX(models.create("resnet18"), rngs=nnx.Rngs(0))
  >>> backbone.lazy_init(x, train=False, features=True)      # or to_nnx(model, variables)
  >>> detector = Detector(backbone, rngs=nnx.Rngs(1))           # the user's nnx.Module
  >>> detector.backbone = rm_convert(detector.backbone, features=True)   # plain, same outputs

The pure-function form is `transforms.rm_convert(backbone.to_nnx__module,
linen_variables(backbone))`, then `plain.apply(plain_vars, x)`.
"""

from __future__ import annotations

from flax import nnx
from flax.nnx.bridge import variables as bridge_variables

from rmjax import transforms


def linen_variables(module: nnx.Module) -> dict:
  """The linen-style `{"params", "batch_stats"}` that an NNX module holds (e.g. a
  `nnx.bridge.ToNNX` around an rmjax model): plain nested dicts of arrays, what
  `model.apply` and `transforms.rm_convert` take. `batch_stats` only where there are any.

    >>> plain, plain_vars = transforms.rm_convert(wrapped.to_nnx__module, linen_variables(wrapped))
  """
  variables = {"params": nnx.state(module, nnx.Param).to_pure_dict()}
  stats = nnx.state(module, nnx.BatchStat).to_pure_dict()
  if stats:
    variables["batch_stats"] = stats
  return variables


def to_nnx(module, variables) -> nnx.bridge.ToNNX:
  """The linen `module` (an rmjax model or a `PlainNet`) with `variables` as an NNX module,
  initialised from them (no sample input, no random init): call it as you would `module.apply`
  without the variables, e.g. `to_nnx(plain, plain_vars)(x, features=True)`."""
  wrapped = nnx.bridge.ToNNX(module)
  # What ToNNX does with the variables its first call creates: the bridge's own conversion of
  # linen collections into NNX variables (Param, BatchStat), one attribute per top-level name.
  for name, value in bridge_variables.linen_vars_to_nnx_attrs(variables).items():
    setattr(wrapped, name, nnx.data(value))
  return wrapped


def rm_convert(module: nnx.bridge.ToNNX, **options) -> nnx.bridge.ToNNX:
  """`transforms.rm_convert` of the rmjax model a `ToNNX` module wraps, with the variables it
  holds: the plain network, again as an NNX module (`to_nnx`). `options` are rm_convert's
  (`features=True` for a backbone, `keep_bn`, ...). The module is not changed.

    >>> detector.backbone = rm_convert(detector.backbone, features=True)
  """
  if not isinstance(module, nnx.bridge.ToNNX):
    raise TypeError(
      f"rm_convert takes an nnx.bridge.ToNNX around an rmjax model, got {type(module).__name__}"
    )
  plain, plain_vars = transforms.rm_convert(
    module.to_nnx__module, linen_variables(module), **options
  )
  return to_nnx(plain, plain_vars)
