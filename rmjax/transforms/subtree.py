"""Converting a residual network that is one part of a larger Flax module (a detector's
backbone, an encoder): RM on the variables under one path, the rest left as it is.

A linen module that holds a submodule keeps that submodule's variables under its name in every
collection (`variables["params"]["backbone"]`, `variables["batch_stats"]["backbone"]`), so the
backbone's own variables are a sub-tree, and its plain network's variables go back in its place:

  >>> class Detector(nn.Module):
  ...   backbone: nn.Module        # an rmjax model, or the PlainNet it converts into
  ...   @nn.compact
  ...   def __call__(self, x, train=False):
  ...     return Neck()(self.backbone(x, train=train, features=True))
  >>> detector = Detector(models.create("resnet18", stem="imagenet"))
  >>> plain, new_vars = rm_convert_subtree(detector.backbone, variables, "backbone", features=True)
  >>> Detector(plain).apply(new_vars, x)        # == detector.apply(variables, x)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rmjax.transforms.convert import rm_convert


def _path(path: str | Sequence[str]) -> tuple[str, ...]:
  keys = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
  if not keys or not all(isinstance(k, str) and k for k in keys):
    raise ValueError(f"a sub-tree path is one or more names ('backbone', 'a/b'), got {path!r}")
  return keys


def _get(tree, keys):
  for key in keys:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _set(tree: Mapping, keys, value) -> dict:
  """A copy of `tree` (nested dicts) with `value` at `keys`, or nothing there if None; the
  dicts along the path are new, every other entry is shared."""
  out = dict(tree)
  head, rest = keys[0], keys[1:]
  if rest:
    out[head] = _set(tree.get(head, {}), rest, value)
    if not out[head]:
      del out[head]
  elif value is None:
    out.pop(head, None)
  else:
    out[head] = value
  return out


def subtree(variables: Mapping, path: str | Sequence[str]) -> dict:
  """The variables under `path` (e.g. `"backbone"`), collection by collection: what the
  submodule at `path` would get from `init` on its own.

    >>> subtree(variables, "backbone")["params"].keys()     # stem, layer1_0, ...
  """
  keys = _path(path)
  found = {c: _get(tree, keys) for c, tree in variables.items()}
  return {c: tree for c, tree in found.items() if tree is not None}


def replace_subtree(variables: Mapping, path: str | Sequence[str], new: Mapping) -> dict:
  """`variables` with the sub-tree at `path` replaced by `new` (collection -> tree) in every
  collection: the old one removed where `new` has none; collections left empty are dropped."""
  keys = _path(path)
  out = {}
  for collection in dict.fromkeys([*variables, *new]):
    tree = _set(variables.get(collection, {}), keys, new.get(collection))
    if tree:
      out[collection] = tree
  return out


def rm_convert_subtree(model, variables: Mapping, path: str | Sequence[str], **options):
  """`rm_convert` of the residual network `model` whose variables sit at `path` inside a
  larger module's `variables`: returns `(plain, variables with the plain network's variables
  at path)`, everything else unchanged (shared). `options` are `rm_convert`'s (`keep_bn`,
  `features`, ...); pure and jittable like it (`model` and `path` static).

    >>> plain, new_vars = rm_convert_subtree(model.backbone, variables, "backbone", features=True)
  """
  own = subtree(variables, path)
  if "params" not in own:
    top = sorted(variables.get("params", {}))
    raise ValueError(f"no params under {'/'.join(_path(path))!r}; the params hold {top}")
  plain, plain_vars = rm_convert(model, own, **options)
  return plain, replace_subtree(variables, path, plain_vars)
