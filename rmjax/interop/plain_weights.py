"""Deploy-time PyTorch networks -> rmjax's `PlainNet` and its variables.

A code base's own re-parameterisation (RepVGG's `switch_to_deploy`, the RMNet code's
`deploy()`) leaves a single-path chain of convs, BNs and activations: what
`rmjax.transforms.rm_convert` produces, so it imports as a `PlainNet`. The importer lists the
torch modules in order, each as `(name, layer)`: the name its parameters live under and the
plain layer it computes (None for one that changes nothing rmjax sees, a `Flatten`). The
weights are read through `gather`, so every missing key, wrong shape and unexpected key is named
at once.

  >>> modules = sequential([Conv(3, 8, 3, 2, 1, use_bias=True), ReLU(), GlobalAvgPool(), None,
  ...                       Dense(8, 10)])                  # "0.weight", ..., "4.weight"
  >>> plain, variables = import_plain(modules, weights, source="w.pth")
"""

from __future__ import annotations

from collections.abc import Sequence

from rmjax.interop.torchvision_weights import _leaf
from rmjax.interop.weights import SAME, Layout, gather
from rmjax.models.plain import BatchNorm, Conv, Dense, Layer, PlainNet, ReLU

RELU = ReLU()
# (the torch module's name, the plain layer it is); a name only matters for layers with weights.
Module = tuple[str | None, Layer | None]


def sequential(layers: Sequence[Layer | None], prefix: str = "") -> list[Module]:
  """An `nn.Sequential`'s modules, named by position (`prefix` + index), None included."""
  return [(f"{prefix}{i}", layer) for i, layer in enumerate(layers)]


def conv_bn_act(
  in_features: int,
  out_features: int,
  kernel_size: int,
  stride: int = 1,
  *,
  bn: bool,
  groups: int = 1,
  act: Layer = RELU,
) -> list[Layer]:
  """A PyTorch conv (padding k // 2), its BN if `bn` (else folded: the conv has a bias), and
  `act`: one step of a deployed network."""
  conv = Conv(
    in_features, out_features, kernel_size, stride, kernel_size // 2, groups, use_bias=not bn
  )
  return [conv, BatchNorm(out_features), act] if bn else [conv, act]


def import_plain(
  modules: Sequence[Module], weights, *, source: str, problems: Sequence[str] = ()
) -> tuple[PlainNet, dict]:
  """`(PlainNet, variables)` of `modules` (a deployed network, in order) from `weights`.

  Raises:
    WeightImportError: naming each missing key, each wrong shape and each unused key.
  """
  kept = [(name, layer) for name, layer in modules if layer is not None]
  plain = PlainNet(tuple(layer for _, layer in kept))

  def rule(path: tuple[str, ...]) -> tuple[str, Layout]:
    _, index, leaf = path  # ("params", "layers_3", "kernel")
    name, layer = kept[int(index.removeprefix("layers_"))]
    if leaf == "slope":  # PReLU
      return f"{name}.weight", SAME
    return _leaf(name, leaf, linear=isinstance(layer, Dense))

  variables = gather(
    plain,
    weights,
    rule,
    source=source,
    ignore=lambda key: key.endswith("num_batches_tracked"),
    problems=problems,
  )
  return plain, variables


def classes_of(weights, key: str) -> int:
  """The class count: rows of the Linear weight `key` (1000, ImageNet's, where it is missing or
  not a matrix: `gather` then names it)."""
  array = weights.get(key)
  return int(array.shape[0]) if array is not None and array.ndim == 2 else 1000
