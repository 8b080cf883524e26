"""Reference implementations the rule tests compare against (straight from the definitions)."""

import jax
import jax.numpy as jnp


def conv(x, kernel, *, stride=1, padding=None, groups=1, bias=None):
  """NHWC x HWIO convolution with symmetric padding (default k // 2), 'highest' precision."""
  p = kernel.shape[0] // 2 if padding is None else padding
  y = jax.lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    ((p, p), (p, p)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
    precision=jax.lax.Precision.HIGHEST,
  )
  return y if bias is None else y + bias


def batchnorm(y, bn, epsilon):
  return (y - bn["mean"]) / jnp.sqrt(bn["var"] + epsilon) * bn["scale"] + bn["bias"]


def random_bn(key, n, zero_scales=0):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  scale = jax.random.uniform(k1, (n,), minval=-1.5, maxval=1.5)
  scale = scale.at[:zero_scales].set(0.0)
  return {
    "scale": scale,
    "bias": jax.random.normal(k2, (n,)),
    "mean": jax.random.normal(k3, (n,)),
    "var": jax.random.uniform(k4, (n,), minval=0.2, maxval=3.0),
  }


def apply_layer(x, layer, *, stride=1, padding=None, groups=1, epsilon=1e-5):
  """Applies an RM conv-layer dict (deploy or fine-tuning form)."""
  if "bn" in layer:
    y = conv(x, layer["kernel"], stride=stride, padding=padding, groups=groups)
    return batchnorm(y, layer["bn"], epsilon)
  return conv(x, layer["kernel"], stride=stride, padding=padding, groups=groups, bias=layer["bias"])
