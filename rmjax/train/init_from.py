"""Fine-tuning a converted plain network (`config.init_from`, Appendix A.2): check that it fits
the dataset, load it onto the mesh with its reserved channels' BN statistics re-estimated, and
refuse to resume a workdir written by a run of another network.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import logging

from rmjax import data, finetune, plain_io
from rmjax.mesh import Mesh, replicated
from rmjax.models.plain import BatchNorm, PlainNet
from rmjax.run import plain_architecture


def check_init_from(config, input_shape: tuple[int, ...], num_classes: int) -> None:
  """Raises ValueError where `config.init_from` cannot be fine-tuned on the config's dataset."""
  plain, plain_shape = plain_architecture(config.init_from)
  if plain_shape != tuple(input_shape):
    raise ValueError(
      f"config.init_from: {config.init_from} takes inputs of shape {plain_shape}, but "
      f"{config.dataset} images are {tuple(input_shape)}: fine-tune it on data of its own shape"
    )
  x = jax.ShapeDtypeStruct((1, *plain_shape), jnp.float32)
  logits = jax.eval_shape(plain.init_with_output, jax.random.key(0), x)[0]
  if logits.shape[-1] != num_classes:
    raise ValueError(
      f"config.init_from: {config.init_from} has {logits.shape[-1]} outputs, but "
      f"{config.dataset} has {num_classes} classes"
    )


def check_resume_source(config, workdir: str) -> None:
  """Resuming restores into the model this run builds: refuse a workdir whose checkpoints were
  written by a run with another `init_from` (a different model) with a one-line error."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      previous = json.load(f).get("init_from") or ""
  except (OSError, ValueError):
    return
  now = config.init_from or ""

  def norm(path):
    return os.path.abspath(path) if path else ""

  if norm(previous) != norm(now):
    raise ValueError(
      f"{workdir} holds checkpoints of a run with config.init_from={previous!r}, not "
      f"{now!r}: resume with the same init_from, or use a new --workdir"
    )


def plain_variables(config, plain: PlainNet, mesh: Mesh, local_batch: int):
  """The variables of `config.init_from`, replicated over `mesh`, with the reserved channels'
  BN statistics re-estimated on the first `config.init_bn_batches` training batches (A.2)."""
  try:
    _, variables = plain_io.load_plain(config.init_from)
  except plain_io.PlainFormatError as e:
    raise plain_io.PlainFormatError(f"config.init_from: {e}") from None
  # Every process loads the same file; as global replicated arrays they sit on the mesh that
  # the (sharded) batches of the re-estimation use.
  variables = replicated(variables, mesh)
  num_batches = config.init_bn_batches
  if not any(isinstance(layer, BatchNorm) for layer in plain.layers):
    logging.warning(
      "config.init_from: %s has no BatchNorm (deploy form), so no statistics to re-estimate; "
      "Appendix A.2 finds fine-tuning the BN form (convert with --keep_bn) works better",
      config.init_from,
    )
  elif not finetune.reserved_batchnorms(plain):
    logging.info(
      "config.init_from: %s has no reserved BN channels to re-estimate", config.init_from
    )
  elif num_batches > 0:
    batches = data.train_batches(
      config.dataset,
      batch_size=local_batch,
      seed=config.seed,
      image_size=config.image_size,
      data_dir=config.data_dir,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      augment=config.augment,
    )
    images = (mesh.global_batch({"image": b["image"]})["image"] for b in batches)
    start = time.perf_counter()
    variables = finetune.reestimate_reserved_batchnorm(
      plain, variables, images, num_batches=num_batches, out_shardings=mesh.replicated
    )
    logging.info(
      "re-estimated the reserved BN statistics of %s on %d batches (%.1f s)",
      config.init_from,
      num_batches,
      time.perf_counter() - start,
    )
  return variables
