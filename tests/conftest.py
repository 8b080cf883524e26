"""Shared fixtures: models with non-trivial BN statistics, built once per test session."""

import functools

import jax
import jax.numpy as jnp
import pytest

from rmjax import models
from rmjax.testing import random_variables


@functools.cache
def random_model(name: str, stem: str, num_classes: int = 10, size: int = 32):
  """`(model, variables, x)`: a registered model with randomised BN, and a batch of inputs."""
  model = models.create(name, num_classes=num_classes, stem=stem)
  x = jax.random.uniform(jax.random.key(1), (2, size, size, 3), jnp.float32)
  # A few exact-zero BN scales exercise the fine-tuning form's merge rule.
  variables = random_variables(model, x, seed=2, zero_scale_fraction=0.05)
  return model, variables, x


@pytest.fixture
def resnet18_cifar():
  return random_model("resnet18", "cifar")
