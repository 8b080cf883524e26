"""The convolution every rmjax model uses: `conv2d` and its Flax module `Conv`.

Same function as `lax.conv_general_dilated` (NHWC input, HWIO kernel, explicit or "SAME"/"VALID"
padding, `groups` = `feature_group_count`), computed by whichever exact formulation of
`rmjax.models.conv_impls` is fastest for the layer's shape on the backend it runs on. XLA:CPU's
grouped and depthwise convolutions, its 1x1 convolutions' gradients and some dense weight
gradients are several times slower than the same arithmetic written differently; on GPU, XLA's
convolution is used throughout (nothing measured there says otherwise).

  >>> y = conv2d(x, kernel, strides=2, padding=1, groups=x.shape[-1])   # depthwise, "auto"
  >>> y = conv2d(x, kernel, padding=((0, 1), (0, 1)), impl="lax")       # Keras "SAME", stride 2
  >>> Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)        # drop-in for nn.Conv

`Conv` has `nn.Conv`'s parameters (`kernel` HWIO, `bias`) and initialisers, so variable trees,
checkpoints and weight converters do not change.

Choosing the implementation (`impl`):
  "auto"     `choose(...)`: the table below on CPU, "lax" elsewhere.
  "lax"      XLA's convolution.            "shifted"  depthwise as shifted multiply-adds.
  "split"    grouped as per-group convs.   "grouped"  grouped as per-tap group einsums.
  "matmul"   1x1 as a dot.                 "wgrad"    dense, per-tap dots for d/d kernel.
An override replaces "auto" (and only "auto") everywhere, for debugging and for benchmarking
the alternatives: the environment variable `RMJAX_CONV_IMPL=lax`, or `with conv_impl("lax"):`.
Both are read when a function is *traced*: a function jitted before the override keeps the
choice it was traced with (call `jax.clear_caches()` or jit a fresh function). An override that
does not apply to a layer (e.g. "shifted" on a dense conv) falls back to the table's choice.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rmjax import xla_cpu
from rmjax.models import conv_impls
from rmjax.models.conv_impls import Pads

IMPLS: dict[str, Callable] = {
  "lax": conv_impls.lax_conv,
  "shifted": conv_impls.shifted,
  "split": conv_impls.split,
  "grouped": conv_impls.grouped,
  "matmul": conv_impls.matmul,
  "wgrad": conv_impls.wgrad,
}
ENV_VAR = "RMJAX_CONV_IMPL"
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("conv_impl", default=None)

# The CPU dispatch table, from scripts/conv_speed.py (docs/conv_speed.md has the full tables):
# 2-core Xeon (AVX-512), batch 128, float32, forward + backward ms (what training pays):
#   depthwise 3x3, 32x32x32:          lax 572    shifted 20 (torch 34)
#   grouped 3x3 g4, 32x32x128:        lax 10644  split 852  grouped 1846 (torch 296)
#   1x1 64->128, 32x32:               lax 352    matmul 130 (torch 205)
#   dense 3x3 16x16x128->128:         lax 350    wgrad 186 (torch 116)
#   dense 3x3 32x32x16->16:           lax 42     wgrad 50  (torch 15)
# "wgrad" only changes the backward (its forward is lax's), so it is chosen on the backward's
# measurements; it loses where both channel counts are small, as in ResNet-20's first stage.
WGRAD_MIN_CHANNELS = 32
# One dense conv per group beat the per-tap einsum ("grouped") at every group count measured,
# up to 64 groups of 2 channels (split 419 ms, grouped 565, lax 28.9 s), but its program grows
# with the group count and so does compile time: RMNeXt-41x4_8 (up to 24+ groups a layer),
# batch 2, compile + run took 70 s split, 21 s grouped, 10 s lax. Beyond 16 groups the runtime
# gain (~1.3x) no longer pays for that.
SPLIT_MAX_GROUPS = 16
# The measurements above are jax 0.10's default XLA:CPU. `import rmjax` sets
# --xla_cpu_experimental_ynn_fusion_type=dot,reduce (rmjax.xla_cpu) unless XLA_FLAGS names it:
# then XLA:CPU runs dense convolutions and dots through YNNPACK, whose dense conv (forward and
# both gradients) is 1.5-3x faster than the default (dense 3x3 32x32x64 fwd+bwd: 233 vs 715 ms)
# and faster than "wgrad"; its 1x1 weight gradient is still faster as a dot ("wgrad": 61 vs lax
# 92 ms). It does not change grouped or depthwise convolutions, so those keep their
# formulations. The table follows what XLA_FLAGS says, whoever set it.
YNN_FLAG = xla_cpu.YNN_FUSION_TYPE


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  a, b = v
  return (int(a), int(b))


def normalize_padding(
  padding, in_hw: tuple[int, int], kernel_hw: tuple[int, int], strides: tuple[int, int]
) -> Pads:
  """`((top, bottom), (left, right))` from what `nn.Conv` accepts: an int (every side), a pair
  whose items are each an int (both sides of that axis) or a `(low, high)` pair, or "SAME" /
  "VALID" (as lax defines them)."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"padding {padding!r}: only 'SAME' and 'VALID' are supported")
    pads = lax.padtype_to_pads(in_hw, kernel_hw, strides, padding.upper())
    return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  padding = tuple(padding)
  if len(padding) != 2:
    raise ValueError(f"padding {padding!r}: expected an int, a str, or one entry per axis")
  return tuple((int(p), int(p)) if isinstance(p, int) else _pair(p) for p in padding)  # type: ignore[return-value]


def ynn_dots() -> bool:
  """Whether XLA_FLAGS enables XLA:CPU's YNNPACK fusions for dots (see YNN_FLAG)."""
  return _ynn_dots(os.environ.get("XLA_FLAGS", ""))


@functools.cache
def _ynn_dots(flags: str) -> bool:
  value = xla_cpu.flag_value(flags, YNN_FLAG) or ""
  return any(v.lstrip("+") == "dot" for v in value.split(","))


def choose(
  backend: str,
  x_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: tuple[int, int],
  pads: Pads,
  groups: int,
  *,
  ynn: bool | None = None,
) -> str:
  """The implementation "auto" runs for this layer on `backend` ("cpu", "gpu", "tpu");
  `ynn`: whether XLA:CPU's YNNPACK dot fusion is on (default: read from XLA_FLAGS)."""
  del strides, pads  # the measured crossovers did not depend on them
  if backend != "cpu":
    return "lax"
  ynn = ynn_dots() if ynn is None else ynn
  kh, kw, _, out = kernel_shape
  channels = x_shape[-1]
  if groups == channels and groups > 1 and kernel_shape[2] == 1:
    return "shifted"
  if groups > SPLIT_MAX_GROUPS:
    return "grouped"
  if (kh, kw) == (1, 1):
    return "wgrad" if ynn and groups == 1 else "matmul"
  if groups > 1:
    return "split"
  if ynn:
    return "lax"
  return "wgrad" if max(channels, out) >= WGRAD_MIN_CHANNELS else "lax"


def applies(impl: str, kernel_shape: Sequence[int], groups: int, channels: int) -> bool:
  """Whether `impl` can compute a conv of this kernel shape and group count."""
  if impl == "lax":
    return True
  if impl == "shifted":
    return groups == channels and kernel_shape[2] == 1
  if impl in ("split", "grouped"):
    return groups > 1
  if impl == "matmul":
    return tuple(kernel_shape[:2]) == (1, 1)
  if impl == "wgrad":
    return groups == 1
  raise ValueError(f"unknown conv impl {impl!r}; expected 'auto' or one of {tuple(IMPLS)}")


@contextlib.contextmanager
def conv_impl(impl: str | None) -> Iterator[None]:
  """Within the block, every `impl="auto"` conv *traced* uses `impl` where it applies (None:
  back to the table). Takes precedence over the `RMJAX_CONV_IMPL` environment variable.

    >>> with conv_impl("lax"):
    ...   y = jax.jit(model.apply)(variables, x)   # traced here: XLA's convs throughout
  """
  if impl is not None and impl not in IMPLS:
    raise ValueError(f"unknown conv impl {impl!r}; expected one of {tuple(IMPLS)}")
  token = _override.set(impl)
  try:
    yield
  finally:
    _override.reset(token)


def _active_override() -> str | None:
  impl = _override.get() or os.environ.get(ENV_VAR) or None
  if impl is not None and impl != "auto" and impl not in IMPLS:
    raise ValueError(f"{ENV_VAR}={impl!r}: expected 'auto' or one of {tuple(IMPLS)}")
  return None if impl == "auto" else impl


def resolve(
  impl: str,
  x_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: tuple[int, int],
  pads: Pads,
  groups: int,
  backend: str | None = None,
) -> str:
  """The implementation a `conv2d(..., impl=impl)` of these shapes runs (override applied)."""
  if impl == "auto":
    forced = _active_override()
    if forced is not None and applies(forced, kernel_shape, groups, x_shape[-1]):
      return forced
    return choose(backend or jax.default_backend(), x_shape, kernel_shape, strides, pads, groups)
  if not applies(impl, kernel_shape, groups, x_shape[-1]):
    raise ValueError(
      f"conv impl {impl!r} cannot compute a {tuple(kernel_shape)} kernel with {groups} groups"
    )
  return impl


def conv2d(
  x,
  kernel,
  *,
  strides: int | Sequence[int] = 1,
  padding=0,
  groups: int = 1,
  impl: str = "auto",
  precision=None,
):
  """`lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO",
  "NHWC"), feature_group_count=groups)`, by the implementation `impl` (see the module doc).

  Args:
    x: `(N, H, W, C)`.
    kernel: `(kh, kw, C // groups, O)`, O a multiple of `groups`.
    strides: an int or `(sh, sw)`.
    padding: as `nn.Conv` takes it: an int, `((top, bottom), (left, right))` (an int for an
      axis pads both its sides), or "SAME"/"VALID". Non-negative.
    groups: `feature_group_count`: 1 dense, C depthwise (O = m * C allowed).
    impl: "auto" (chosen per shape and backend, at trace time) or a name in `IMPLS`.

    >>> y = conv2d(x, k, strides=2, padding=((0, 1), (0, 1)), groups=x.shape[-1])
  """
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f"conv2d takes NHWC x and HWIO kernel; got {x.shape} and {kernel.shape}")
  strides = _pair(strides)
  kh, kw, kin, out = kernel.shape
  if x.shape[-1] != kin * groups or out % groups:
    raise ValueError(
      f"kernel {kernel.shape} with {groups} groups does not fit {x.shape[-1]} input channels"
    )
  pads = normalize_padding(padding, x.shape[1:3], (kh, kw), strides)
  if min(min(p) for p in pads) < 0:
    raise ValueError(f"negative padding {pads} is not supported")
  name = resolve(impl, x.shape, kernel.shape, strides, pads, groups)
  out_hw = [
    conv_impls.out_size(x.shape[1 + a], kernel.shape[a], strides[a], pads[a]) for a in (0, 1)
  ]
  if min(out_hw) <= 0:
    name = "lax"  # an empty output (a tiny input at stride 2): nothing to formulate
  if name == "split":
    dense = functools.partial(_dense, impl=impl)
    return conv_impls.split(x, kernel, strides, pads, groups, precision, dense=dense)
  return IMPLS[name](x, kernel, strides, pads, groups, precision)


def _dense(x, kernel, strides, pads, groups, precision, *, impl: str):
  """One group of a "split" conv, by the dense implementation `impl` resolves to for it."""
  inner = "auto" if impl in ("auto", "split") else impl
  name = resolve(inner, x.shape, kernel.shape, strides, pads, groups)
  name = "lax" if name == "split" else name
  return IMPLS[name](x, kernel, strides, pads, groups, precision)


class Conv(nn.Module):
  """A drop-in for the `nn.Conv` uses in rmjax (2-D, NHWC) computed by `conv2d`.

  Same fields, parameters (`kernel` `(kh, kw, in // groups, features)`, `bias`) and default
  initialisers as `nn.Conv`, plus `impl`.

    >>> Conv(64, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=64)
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str | int | Sequence = "SAME"
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  precision: lax.PrecisionLike = None
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    kh, kw = _pair(self.kernel_size)
    groups = self.feature_group_count
    if x.shape[-1] % groups:
      raise ValueError(f"{x.shape[-1]} input channels do not split into {groups} groups")
    kernel = self.param(
      "kernel", self.kernel_init, (kh, kw, x.shape[-1] // groups, self.features), self.param_dtype
    )
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    batch_shape = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])  # nn.Conv's rule: every leading axis is a batch axis
    y = conv2d(
      flat,
      kernel,
      strides=self.strides,
      padding=self.padding,
      groups=groups,
      impl=self.impl,
      precision=self.precision,
    )
    y = y.reshape(*batch_shape, *y.shape[1:])
    return y if bias is None else y + bias
