"""A plain network as a file for a serving stack: StableHLO (`jax.export`) or a TensorFlow
SavedModel (`jax2tf`). `python convert.py ... --export stablehlo,savedmodel` writes both.

  >>> export_stablehlo(plain, variables, (224, 224, 3), "net.stablehlo")
  >>> exported = jax.export.deserialize(open("net.stablehlo", "rb").read())
  >>> logits = exported.call(images)          # float32 NHWC, any batch size

  >>> export_savedmodel(plain, variables, (224, 224, 3), "net.savedmodel")
  >>> serve = tf.saved_model.load("net.savedmodel").signatures["serving_default"]
  >>> logits = serve(images=tf.constant(images))["logits"]

With `features=True` (a PlainNet with taps, `rm_convert(..., features=True)`) they compute
the feature maps instead: a tuple from the StableHLO function, `{"features_0": ..., ...}` from
the SavedModel's signature (`features_{k}` is `plain.apply(..., features=True)[k]`).

Both bake the weights in, take any batch size (the batch dimension is symbolic, the image shape
fixed) and are lowered for CPU, CUDA and TPU. Both are written atomically (a temporary sibling
renamed into place). The SavedModel holds the network as one XlaCallModule op (jax2tf's native
serialization): TF Serving runs it, and `tf.lite.TFLiteConverter.from_saved_model` converts it.
TensorFlow is imported only by the SavedModel functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rmjax import atomic
from rmjax.models.plain import PlainNet

PLATFORMS = ("cpu", "cuda", "tpu")
SIGNATURE = "serving_default"  # the SavedModel's signature: images -> {"logits": ...}
FEATURES = "features_{}"  # backbone mode: the name of feature map k in an artefact's outputs


def _forward(plain: PlainNet, variables, features: bool = False) -> Callable:
  variables = jax.device_get(variables)
  # Dense: the canonical form, the same program for every platform it is exported for.
  return lambda images: plain.apply(variables, images, structured=False, features=features)


def export_stablehlo(
  plain: PlainNet, variables, input_shape, path: str, *, platforms=PLATFORMS, features=False
) -> None:
  """Writes `plain` with its `variables` as a serialized `jax.export.Exported` to `path`.

  Args:
    input_shape: one input without the batch axis, e.g. `(224, 224, 3)`; the batch size is a
      symbolic dimension, so the artefact accepts any.
    platforms: what to lower for; `exported.call` picks the one it runs on.
    features: export the feature maps (a tuple) instead of the logits.

  Example:
    >>> export_stablehlo(plain, variables, (32, 32, 3), "/tmp/net.stablehlo")
    >>> jax.export.deserialize(open("/tmp/net.stablehlo", "rb").read()).call(x)
  """
  (batch,) = jax.export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
  forward = jax.jit(_forward(plain, variables, features))
  exported = jax.export.export(forward, platforms=platforms)(spec)
  atomic.write_bytes(path, exported.serialize())


def load_stablehlo(path: str) -> Callable:
  """The function a `.stablehlo` artefact holds: NHWC float32 images -> logits (or the tuple of
  feature maps)."""
  with open(path, "rb") as f:
    return jax.export.deserialize(bytearray(f.read())).call


def export_savedmodel(
  plain: PlainNet, variables, input_shape, path: str, *, platforms=PLATFORMS, features=False
) -> None:
  """Writes `plain` with its `variables` as a TensorFlow SavedModel directory `path`.

  The signature `serving_default` takes `images` (float32 `[batch, *input_shape]`, any batch)
  and returns `{"logits": ...}`, or with `features` `{"features_0": ..., ...}`. The weights
  are TF variables, so large networks stay below protobuf's 2 GB limit on graph constants.

  Example:
    >>> export_savedmodel(plain, variables, (32, 32, 3), "/tmp/net.savedmodel")
    >>> tf.saved_model.load("/tmp/net.savedmodel").signatures["serving_default"](images=x)
  """
  import tensorflow as tf  # Deferred: only this export needs TensorFlow.
  from jax.experimental import jax2tf

  params = tf.nest.map_structure(
    lambda a: tf.Variable(np.asarray(a), trainable=False), jax.device_get(variables)
  )
  module = tf.Module()
  # The module tracks (and saves) the variables through a flat list: a dict attribute would be
  # wrapped by TF in a proxy that jax's pytrees do not see as a dict.
  module._variables = tf.nest.flatten(params)
  dims = ", ".join(str(d) for d in input_shape)
  forward = jax2tf.convert(
    functools.partial(plain.apply, structured=False, features=features),
    polymorphic_shapes=[None, f"(batch, {dims})"],
    with_gradient=False,
    native_serialization_platforms=tuple(platforms),
  )

  @tf.function(
    autograph=False,
    input_signature=[tf.TensorSpec((None, *input_shape), tf.float32, name="images")],
  )
  def serve(images):
    out = forward(params, images)
    if features:
      return {FEATURES.format(k): y for k, y in enumerate(out)}
    return {"logits": out}

  module.serve = serve
  with atomic.staged_dir(path) as tmp:
    tf.saved_model.save(module, tmp, signatures={SIGNATURE: serve})


def load_savedmodel(path: str) -> Callable:
  """The function a SavedModel written by `export_savedmodel` serves: images -> logits (or
  the tuple of feature maps)."""
  import tensorflow as tf

  serve = tf.saved_model.load(path).signatures[SIGNATURE]

  def run(images):
    out = serve(images=tf.constant(np.asarray(images, np.float32)))
    if "logits" in out:
      return out["logits"].numpy()
    return tuple(out[FEATURES.format(k)].numpy() for k in range(len(out)))

  return run
