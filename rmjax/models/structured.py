"""Structured execution of a plain network's convs: Dirac copies and adds instead of zeros.

RM makes a residual block plain by widening its convs with Dirac kernels (Sec. 4.1, Eq. 2-4):
a reserving conv gains output channels that copy its input, a middle conv carries them as
identity groups, and the merging conv gains input columns that add the shortcut. As dense
kernels these are almost all zeros — a ResNet-18's plain conv1 spends a third of its
multiply-adds on its reserved rows. The converters record where that structure is
(`Conv.reserved`, `carried`, `merged`, `merged_identity`), and `StructuredConv` computes the
same conv from the learned part of the kernel plus
  - the reserved rows as a strided slice of the input times their centre tap (a copy),
  - merged columns as a 1x1 matmul of the strided input (projection), or an add (identity),
then concatenates: the network stays single-path, one tensor between layers.

  >>> plain, plain_vars = rmjax.transforms.rm_convert(model, variables)
  >>> plain.apply(plain_vars, x, structured=True)      # == plain.apply(plain_vars, x)

Exact as long as the kernel still has the recorded zeros; training a plain network fills them
in, and `check_structure(plain, variables)` says whether they are there.

`plain.apply(variables, x)` (`structured=None`) runs each conv in the form `runs_structured`
picks for the platform: the rule and the measurements behind it are in its docstring.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rmjax.models.conv import conv2d


def _conv(x, kernel, spec, groups: int):
  pads = (spec.pads_at(x.shape[1]), spec.pads_at(x.shape[2]))
  return conv2d(x, kernel, strides=spec.stride, padding=pads, groups=groups)


def centre_samples(x, spec):
  """What the kernel's centre tap reads at each output position: `x` sampled at the conv's
  stride and offset by its padding (zero where that falls into the padding). With padding
  "same" the offset depends on the axis' size: a stride-2 3x3 conv's centre tap reads input
  `2 i + 1` on even sizes (padded (0, 1)) but `2 i` on odd ones (padded (1, 1))."""
  k, c = spec.kernel_size, spec.kernel_size // 2
  for axis in (1, 2):
    n = x.shape[axis]
    low, high = spec.pads_at(n)
    size = (n + low + high - k) // spec.stride + 1
    start = c - low
    stop = start + (size - 1) * spec.stride + 1
    before, after = max(0, -start), max(0, stop - n)
    if before or after:
      widths = [(0, 0)] * x.ndim
      widths[axis] = (before, after)
      x = jnp.pad(x, widths)
      start, stop = start + before, stop + before
    x = lax.slice_in_dim(x, start, stop, spec.stride, axis)
  return x


class Plan(NamedTuple):
  """Where a structured conv's parts sit in its kernel (static: from the spec alone)."""

  main_in: int  # the learned conv reads inputs [:main_in] ...
  main_out: int  # ... and writes outputs [:main_out]
  main_groups: int
  centre: int  # the centre tap's index along each kernel axis
  outs: np.ndarray | None = None  # reserved outputs
  sources: np.ndarray | None = None  # the input each reserved output copies
  taps: np.ndarray | None = None  # that input's index along the kernel's input axis


def plan(spec) -> Plan:
  """Static index arithmetic for one structured conv: which kernel slices hold the learned
  part, and where the copies' and adds' centre taps are. Raises ValueError for a record that
  does not fit the conv's shape."""
  cin, cout, g, r, m = spec.in_features, spec.out_features, spec.groups, spec.reserved, spec.merged
  problems = []
  if r and m:
    problems.append("both reserved and merged (no converter emits that)")
  if not 0 <= r < cout or r > cin:
    problems.append(f"reserved={r} does not fit {cin} -> {cout} channels")
  if not 0 <= m < cin or (spec.merged_identity and m > cout):
    problems.append(f"merged={m} does not fit {cin} -> {cout} channels")
  if m and g != 1:
    problems.append("merged columns in a grouped conv")
  if r and not spec.carried and g != 1:
    problems.append("reserved outputs of a grouped conv that are not carried")
  per_group, out_per_group = cin // g, cout // g
  if r and spec.carried and g > 1 and (r % out_per_group or per_group != out_per_group):
    problems.append(f"{r} carried channels are not whole groups of {per_group}")
  if problems:
    raise ValueError(f"cannot run {spec} structured: " + "; ".join(problems))
  c = spec.kernel_size // 2
  if r:
    outs = np.arange(cout - r, cout)
    sources = np.arange(cin - r, cin) if spec.carried else np.arange(r)
    # Index of each source within its output's group of the kernel's input axis.
    taps = sources - (outs // out_per_group) * per_group if g > 1 else sources
    main_in = cin - r if spec.carried else cin
    main_groups = g - r // out_per_group if g > 1 else 1
    return Plan(main_in, cout - r, main_groups, c, outs, sources, taps)
  return Plan(cin - m, cout, 1, c)


def saving(spec) -> float:
  """The fraction of a plain conv's multiply-adds that structured execution skips (0 for a conv
  without recorded structure): the same at every spatial size, as both forms compute every
  output position. A copy costs one multiply per value, an identity add one per value.

    >>> saving(Conv(64, 128, 3, padding=1, reserved=64))      # 1 - (9*64*64 + 64) / (9*64*128)
    0.4991...
  """
  if not getattr(spec, "structured", False):
    return 0.0
  p = plan(spec)
  taps = spec.kernel_size**2
  dense = taps * (spec.in_features // spec.groups) * spec.out_features
  if spec.reserved:
    kept = taps * (p.main_in // p.main_groups) * p.main_out + spec.reserved
  else:
    m = spec.merged
    shortcut = m if spec.merged_identity else m * spec.out_features
    kept = taps * p.main_in * spec.out_features + shortcut
  return 1.0 - kept / dense


def kind(spec) -> str:
  """The layer kind `runs_structured` keys on: "depthwise" (one input channel per group),
  "grouped" (several groups of several channels), "pointwise" (1x1, one group) or "dense"."""
  if spec.groups == 1:
    return "pointwise" if spec.kernel_size == 1 else "dense"
  return "depthwise" if spec.in_features == spec.groups else "grouped"


# The least `saving` at which `plain.apply` runs a conv structured by default, by platform and
# `kind` (None: never). See `runs_structured` for the measurements behind each number.
MIN_SAVING: dict[str, dict[str, float | None]] = {
  "cpu": {"pointwise": 0.0, "dense": 0.0, "grouped": 0.0, "depthwise": 0.0},
  "gpu": {"pointwise": 0.6, "dense": 0.6, "grouped": 0.6, "depthwise": 0.0},
}


def runs_structured(spec, platform: str) -> bool:
  """Whether `PlainNet` runs the conv `spec` structured when `structured=None` (its default) on
  `platform` ("cpu", "gpu", ...; `jax.default_backend()`): where it has recorded structure,
  skips more than nothing, and skips at least `MIN_SAVING[platform][kind(spec)]` of its
  multiply-adds (`saving`). Other platforms (no measurements) run dense, the canonical form.
  The choice is per conv: both forms compute the same tensor, so they mix freely.

  Measured basis (batch 128 unless said; whole networks, dense vs structured forms; the
  per-conv savings are `saving` of the converted presets):

  - CPU (docs/benchmarks.md, sections `cpu` and `cpu-torch`, 2-core Xeon, jax 0.10.2, 32x32):
    structured is faster or equal for every kind — RMNet-18 (dense convs, savings 0.30–0.50)
    1.00x vs 0.43x of ResNet-18; MobileNetV1 (depthwise, 0.22) 1.68x vs 1.55x; RMNeXt-26x3_32
    (dense and grouped, 0.20–0.33) 1.02x vs 0.87x (0.80x vs 0.79x in `cpu-torch`). Hence 0:
    any saving. Known exception: at batch 1 the dense form wins for RMNet-18 (0.94x vs 0.79x)
    and RMNeXt-26 (0.48x vs 0.42x), where slicing the kernels' learned parts at every call
    outweighs the multiply-adds saved. Conv by conv, each alone (2-core AMD EPYC, shared,
    2026-12-04: `bench.py --suites=rmnext26,resnet18 --modes=dense --noinference
    --layer_timings --notorch`), structured / dense time is 0.50–0.96 for RMNet-18's 3x3
    convs and 0.71–0.88 for RMNeXt-26's grouped ones, but 0.73–2.05 for its 1x1 convs (slower
    at 32x32 and 16x16); yet RMNeXt-26 whole, its 1x1 convs dense and the rest structured, was
    no faster than all structured (33.4 vs 35.5 imgs/s, dense 36.2; a noisy run): fusion
    changes the balance, so the CPU keeps 0 for 1x1 ("pointwise") convs too.
  - GPU (NVIDIA H200, jax 0.11.2): at 224x224, RMNet-50 (dense and grouped convs, savings
    0.66–0.80 but for its first block's 0.49–0.50) runs at 0.99x of ResNet-50 structured and
    0.61x dense (issue 22); at 32x32 (docs/benchmarks.md, section `gpu`) RMNeXt-26x3_32
    (0.20–0.33) runs faster dense (1.24x vs 0.97x of its residual network), RMNet-18
    (0.30–0.50) about as fast either way (1.25x dense, 1.31x structured; 1.33x vs 0.99x at
    batch 32), and MobileNetV1 (depthwise, 0.22) faster structured at every batch size (1.71x
    vs 1.43x). Hence 0.6 for dense, 1x1 and grouped convs, 0 for depthwise ones.
    `scripts/gpu_checks.sh` measures every ImageNet plain network of Table 3 in both forms and
    conv by conv (docs/benchmarks.md, sections `gpu-imagenet`, `gpu-layers`), to set these.

  Training (`train=True`) always runs dense: structured execution would give the recorded zeros
  no gradient, and training is what fills them in.
  """
  if not getattr(spec, "structured", False):
    return False
  threshold = MIN_SAVING.get(platform, {}).get(kind(spec))
  s = saving(spec)
  return threshold is not None and s > 0 and s >= threshold


def structured_choice(plain, platform: str | None = None) -> tuple[bool, ...]:
  """Per layer of `plain`, whether `plain.apply(..., structured=None)` runs it structured on
  `platform` (default: `jax.default_backend()`)."""
  platform = platform or jax.default_backend()
  return tuple(runs_structured(layer, platform) for layer in plain.layers)


class StructuredConv(nn.Module):
  """A `Conv` spec with recorded Dirac structure, run as learned conv + copies/adds.

  Same variables (`kernel`, `bias`) and the same function as the dense conv.
  """

  spec: object  # the plain `Conv` spec (rmjax.models.plain) it runs

  @nn.compact
  def __call__(self, x):
    s = self.spec
    p = plan(s)
    k = s.kernel_size
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (k, k, s.in_features // s.groups, s.out_features)
    )
    bias = (
      self.param("bias", nn.initializers.zeros_init(), (s.out_features,)) if s.use_bias else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
    c = p.centre
    if s.reserved:
      # A grouped kernel's learned groups come first; in a dense one the learned block is the
      # top-left corner (the carried rows of the other outputs are zeros).
      main_kernel = kernel[..., : p.main_out]
      if s.groups == 1:
        main_kernel = main_kernel[:, :, : p.main_in]
      y = _conv(x[..., : p.main_in], main_kernel, s, p.main_groups)
      scale = kernel[c, c, p.taps, p.outs]
      copies = centre_samples(x[..., p.sources[0] : p.sources[-1] + 1], s) * scale
      y = jnp.concatenate([y, copies], axis=-1)
    else:
      main_in, m = p.main_in, s.merged
      y = _conv(x[..., :main_in], kernel[:, :, :main_in], s, 1)
      shortcut = centre_samples(x[..., main_in:], s)
      if s.merged_identity:
        added = shortcut * kernel[c, c, main_in + np.arange(m), np.arange(m)]
        y = added + y if m == y.shape[-1] else jnp.concatenate([y[..., :m] + added, y[..., m:]], -1)
      else:
        y = y + jnp.einsum("nhwc,co->nhwo", shortcut, kernel[c, c, main_in:])
    return y if bias is None else y + bias


def check_structure(plain, variables) -> list[str]:
  """Where `variables` lack the Dirac structure `plain`'s convs record: one line per conv whose
  kernel has a non-zero entry that `structured=True` would skip. Empty when exact. On the host.

    >>> assert not check_structure(plain, plain_vars)
  """
  problems = []
  for i, spec in enumerate(plain.layers):
    if not getattr(spec, "structured", False):  # a Conv spec with a record
      continue
    p = plan(spec)
    kernel = np.asarray(variables["params"][f"layers_{i}"]["kernel"])
    skipped = np.ones(kernel.shape, bool)  # True where the structured conv does not read
    c = p.centre
    if spec.reserved:
      main = (
        (slice(None),) * 3 if spec.groups > 1 else (slice(None), slice(None), slice(0, p.main_in))
      )
      skipped[(*main, slice(0, p.main_out))] = False
      skipped[c, c, p.taps, p.outs] = False
    else:
      main_in, m = p.main_in, spec.merged
      skipped[:, :, :main_in] = False
      if spec.merged_identity:
        skipped[c, c, main_in + np.arange(m), np.arange(m)] = False
      else:
        skipped[c, c, main_in:] = False
    worst = float(np.max(np.abs(kernel[skipped]), initial=0.0))
    if worst:
      problems.append(f"layers_{i} ({spec}): max |skipped kernel entry| {worst:.3g}")
  return problems
