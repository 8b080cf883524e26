"""tfds input pipelines (tf.data) for training and evaluation, deterministic and resumable.

Training batches are a pure function of `(seed, process split)`: each epoch is shuffled with a
seed derived from `(seed, epoch)` and every example is augmented with stateless random ops keyed
by `(seed, process, position in the stream)`. Resuming at `start_step` therefore skips whole
epochs by arithmetic and only the remainder of one epoch by reading, and yields exactly what an
uninterrupted run would.

>>> batches = train_batches("fashion_mnist_small", batch_size=128, seed=0)
>>> next(batches)["image"].shape
(128, 32, 32, 1)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rmjax.datasets import fashion_mnist_small

# tf.data runs on the host. Hide accelerators from TensorFlow (a no-op with tensorflow-cpu), so
# that it never reserves memory that JAX needs; too late if TensorFlow already started.
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:
  pass
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset; `image_size` is the default size of the batches' images."""

  name: str
  num_classes: int
  image_size: int
  channels: int
  num_train: int
  num_test: int
  train_split: str
  test_split: str


@dataclasses.dataclass(frozen=True)
class _Recipe:
  """How a dataset's images are preprocessed: per-channel mean and std in [0, 1] units."""

  mean: tuple[float, ...]
  std: tuple[float, ...]
  pad_to_32: bool = False  # Fashion-MNIST: 28x28 -> 32x32, so CIFAR architectures apply.


def _info(name, classes, size, channels, train, test, test_split="test"):
  return DatasetInfo(name, classes, size, channels, train, test, "train", test_split)


_INFOS = {
  info.name: info
  for info in (
    _info("fashion_mnist_small", 10, 32, 1, 10_000, 2_000),
    _info("fashion_mnist", 10, 32, 1, 60_000, 10_000),
    _info("cifar10", 10, 32, 3, 50_000, 10_000),
    _info("cifar100", 100, 32, 3, 50_000, 10_000),
    _info("imagenet2012", 1000, 224, 3, 1_281_167, 50_000, test_split="validation"),
  )
}
DATASETS: tuple[str, ...] = tuple(_INFOS)

# Fashion-MNIST statistics of the full official train split (28x28, before padding); the
# zero padding to 32x32 extends the black background, so it is not counted.
_FASHION = _Recipe(mean=(0.2860,), std=(0.3530,), pad_to_32=True)
_RECIPES = {
  "fashion_mnist_small": _FASHION,
  "fashion_mnist": _FASHION,
  "cifar10": _Recipe(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
  "cifar100": _Recipe(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
  "imagenet2012": _Recipe(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}
# tfds cannot download these; they need files put in `<data_dir>/downloads/manual/`.
_MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}
# Encoded ImageNet JPEGs average ~110 kB, so this buffer holds ~1 GB per process. Files are
# also shuffled per epoch, which does most of the mixing.
_IMAGENET_SHUFFLE_BUFFER = 10_000
_EVAL_CROP_FRACTION = 0.875  # ImageNet eval: resize the shorter side to size / 0.875, crop.


class DatasetNotFoundError(FileNotFoundError):
  """A dataset that is not prepared in its data_dir and that tfds could not prepare there."""


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
  """Static facts about dataset `name`; reads and downloads nothing.

  `data_dir` is accepted for symmetry with the pipelines and does not change the facts.

  >>> dataset_info("cifar10").num_classes
  10
  """
  del data_dir
  if name not in _INFOS:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
  return _INFOS[name]


def train_batches(
  name: str,
  *,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  image_size: int | None = None,
  data_dir: str | None = None,
  process_index: int = 0,
  process_count: int = 1,
  augment: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator over this process's training batches, from step `start_step` on.

  Batches are `{'image': float32 (B, H, W, C) normalised, 'label': int32 (B,)}` with
  `B = batch_size` per process. Each process reads its own equal share of the train split
  (the remainder that does not divide evenly is dropped); each epoch drops its last partial
  batch. Augmentation: pad-4 (zero) random crop + flip for 32x32 datasets, RandomResizedCrop
  + flip for ImageNet; with `augment=False` the eval preprocessing instead (short runs).
  The dataset is prepared (downloaded) if needed; `DatasetNotFoundError` if that is impossible.

  >>> it = train_batches("fashion_mnist_small", batch_size=64, seed=0, start_step=1000)
  >>> batch = next(it)  # the batch an uninterrupted run yields at step 1000
  """
  info = dataset_info(name)
  size = _image_size(info, image_size)
  _check_batching(batch_size, process_index, process_count)
  _require(seed >= 0 and start_step >= 0, f"Need seed, start_step >= 0, got {seed}, {start_step}.")
  builder = _prepared_builder(name, data_dir)
  split = tfds.even_splits(info.train_split, n=process_count, drop_remainder=True)[process_index]
  decoders = _decoders(name)
  streamed = name in _MANUAL_FILES  # Too large to hold in memory: stream and reshuffle files.
  base = builder.as_dataset(
    split=split, shuffle_files=False, decoders=decoders, read_config=_read_config()
  )
  num_examples = _cardinality(base, name, split)
  steps_per_epoch = num_examples // batch_size
  _require(
    steps_per_epoch > 0,
    f"batch_size {batch_size} exceeds the {num_examples} training examples of {name!r} "
    f"for process {process_index} of {process_count}.",
  )
  if not streamed:
    base = base.cache()  # Decoded once, in memory, shared by every epoch's iterator.
  augment = _train_fn(name, size) if augment else _unaugmented_fn(name, size)
  first_epoch, skipped_steps = divmod(start_step, steps_per_epoch)

  def epoch_batches(epoch: int, skip_examples: int) -> tf.data.Dataset:
    shuffle_seed = _epoch_seed(seed, epoch)
    ds = base
    if streamed:
      read_config = _read_config(shuffle_seed=shuffle_seed)
      ds = builder.as_dataset(
        split=split, shuffle_files=True, decoders=decoders, read_config=read_config
      )
    buffer = _IMAGENET_SHUFFLE_BUFFER if streamed else num_examples
    ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    # Position in this process's stream: the key of the example's augmentation.
    ds = ds.enumerate(start=epoch * num_examples).skip(skip_examples)
    ds = ds.map(
      lambda position, example: augment(example, _example_key(seed, process_index, position)),
      num_parallel_calls=AUTOTUNE,
    )
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)

  def batches():
    skip_examples = skipped_steps * batch_size
    for epoch in itertools.count(first_epoch):
      yield from tfds.as_numpy(epoch_batches(epoch, skip_examples))
      skip_examples = 0

  return batches()


def eval_batches(
  name: str,
  *,
  batch_size: int,
  image_size: int | None = None,
  data_dir: str | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass, in fixed order, over this process's share of the test (ImageNet: validation) split.

  Every batch holds exactly `batch_size` examples: `{'image', 'label', 'mask'}`, where `mask`
  is float32 (B,), 1 for real examples and 0 for padding (zero image, label 0). Every process
  yields the same number of batches, so a multi-host eval step runs in lockstep; summed over
  processes, `mask` counts each test example exactly once.

  >>> correct = sum(((predict(b["image"]) == b["label"]) * b["mask"]).sum()
  ...               for b in eval_batches("cifar10", batch_size=500))
  """
  info = dataset_info(name)
  size = _image_size(info, image_size)
  _check_batching(batch_size, process_index, process_count)
  builder = _prepared_builder(name, data_dir)
  # Shares differ by at most one example; the first ones are the larger.
  shares = tfds.even_splits(info.test_split, n=process_count, drop_remainder=False)

  def share(index):
    return builder.as_dataset(
      split=shares[index], shuffle_files=False, decoders=_decoders(name), read_config=_read_config()
    )

  ds = share(process_index)
  num_examples = _cardinality(ds, name, shares[process_index])
  num_batches = math.ceil(_cardinality(share(0), name, shares[0]) / batch_size)
  preprocess = _eval_fn(name, size)
  ds = ds.map(
    lambda example: {
      "image": preprocess(example["image"]),
      "label": tf.cast(example["label"], tf.int32),
      "mask": tf.constant(1.0),
    },
    num_parallel_calls=AUTOTUNE,
  )
  padding = {
    "image": tf.zeros((size, size, info.channels), tf.float32),
    "label": tf.constant(0, tf.int32),
    "mask": tf.constant(0.0),
  }
  ds = ds.concatenate(
    tf.data.Dataset.from_tensors(padding).repeat(num_batches * batch_size - num_examples)
  )
  return iter(tfds.as_numpy(ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)))


# --- Preparing and reading -----------------------------------------------------------------


def prepare(name: str, data_dir: str | None = None) -> None:
  """Prepares dataset `name` in `data_dir` (downloads it where tfds can) or raises
  `DatasetNotFoundError` saying how to; a no-op when it is prepared. Call it before slow work."""
  dataset_info(name)
  _prepared_builder(name, data_dir)


def _prepared_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder of a prepared dataset: prepares it (download) if needed, else a clear error."""
  if name == "fashion_mnist_small":
    return fashion_mnist_small.prepare(data_dir)  # From package data: cannot fail offline.
  builder = tfds.builder(name, data_dir=data_dir)
  # What `builder.is_prepared()` checks, without its warning about a missing folder.
  if os.path.exists(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
    return builder
  root = os.fspath(builder.data_dir_root)
  before = _directories(root)
  try:
    builder.download_and_prepare()
  except Exception as e:  # tfds raises anything from AssertionError to OSError here.
    # tfds makes its folders (downloads/, <name>/) before it finds it cannot fill them.
    _remove_new_empty_directories(root, before)
    # `from None`: the message carries the cause; a tfds traceback would bury it.
    raise DatasetNotFoundError(_not_found_message(name, builder, e)) from None
  return builder


def _directories(root: str) -> set[str]:
  return {folder for folder, _, _ in os.walk(root)}


def _remove_new_empty_directories(root: str, before: set[str]) -> None:
  for folder, _, _ in os.walk(root, topdown=False):  # children first: a parent may empty
    if folder not in before and not os.listdir(folder):
      os.rmdir(folder)


def _not_found_message(name: str, builder, cause: Exception) -> str:
  root = os.fspath(builder.data_dir_root)
  why = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
  command = (
    'python -c "import tensorflow_datasets as tfds; '
    f"tfds.builder('{name}', data_dir='{root}').download_and_prepare()\""
  )
  if name in _MANUAL_FILES:
    manual = os.path.join(root, "downloads", "manual")
    files = " and ".join(os.path.join(manual, f) for f in _MANUAL_FILES[name])
    how = (
      "tfds cannot download it: register at https://image-net.org/download-images, download "
      f"the files and put them where tfds expects manual downloads, {files}, then run {command} "
      "once (it takes hours)."
    )
  else:
    how = (
      f"tfds could not download it. On a machine with network access run {command}, then copy "
      f"{root} here or pass its location as data_dir."
    )
  return (
    f"Dataset {name!r} is not prepared in data_dir {root} (searched {builder.data_dir}), and "
    f"{how} (tfds: {type(cause).__name__}: {why})"
  )


def _read_config(shuffle_seed: int | None = None) -> tfds.ReadConfig:
  # No tfds autocache: small datasets are cached here, after decoding.
  return tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)


def _decoders(name: str):
  # JPEGs stay encoded through the shuffle, so ImageNet can crop while decoding.
  return {"image": tfds.decode.SkipDecoding()} if name == "imagenet2012" else None


def _cardinality(ds: tf.data.Dataset, name: str, split) -> int:
  count = int(ds.cardinality())
  if count < 0:  # tfds datasets know their size; guard against a silently infinite epoch.
    raise ValueError(f"Unknown number of examples in {name!r} split {split}.")
  return count


# --- Seeds --------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
  """A 63-bit shuffle seed for `epoch` (seed >= 0), independent across epochs and seeds."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _example_key(seed: int, process_index: int, position: tf.Tensor) -> tf.Tensor:
  """The stateless-RNG key of the example at `position` of a process's stream."""
  base = tf.constant([seed % 2**63, process_index], tf.int64)
  return tf.random.experimental.stateless_fold_in(base, position)


# --- Preprocessing ------------------------------------------------------------------------


def _normalise(image: tf.Tensor, recipe: _Recipe) -> tf.Tensor:
  """Pixels in [0, 255] (uint8 or float) -> float32, per channel `(x / 255 - mean) / std`."""
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(recipe.mean)) / tf.constant(recipe.std)


def _train_fn(name: str, size: int) -> Callable[[dict, tf.Tensor], dict]:
  recipe = _RECIPES[name]

  def augment(example, key):
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    if name == "imagenet2012":
      image = _random_resized_crop(example["image"], size, crop_key)
    else:
      image = _random_crop_pad4(_pad_to_32(example["image"], recipe), crop_key)
    image = tf.image.stateless_random_flip_left_right(image, flip_key)
    return {"image": _normalise(image, recipe), "label": tf.cast(example["label"], tf.int32)}

  return augment


def _unaugmented_fn(name: str, size: int) -> Callable[[dict, tf.Tensor], dict]:
  """Training examples preprocessed like eval ones (the key is unused)."""
  preprocess = _eval_fn(name, size)

  def unaugmented(example, key):
    del key
    return {"image": preprocess(example["image"]), "label": tf.cast(example["label"], tf.int32)}

  return unaugmented


def _eval_fn(name: str, size: int) -> Callable[[tf.Tensor], tf.Tensor]:
  recipe = _RECIPES[name]
  channels = _INFOS[name].channels

  def preprocess(image):
    if name == "imagenet2012":
      image = _resize_centre_crop(image, size)
    else:
      image = _pad_to_32(image, recipe)
    return tf.ensure_shape(_normalise(image, recipe), (size, size, channels))

  return preprocess


def _pad_to_32(image: tf.Tensor, recipe: _Recipe) -> tf.Tensor:
  return tf.pad(image, [[2, 2], [2, 2], [0, 0]]) if recipe.pad_to_32 else image


def _random_crop_pad4(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
  """CIFAR-style: zero-pad 4 pixels per side (black, before normalising), random crop back."""
  padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
  return tf.image.stateless_random_crop(padded, tf.shape(image), seed=key)


def _random_resized_crop(jpeg: tf.Tensor, size: int, key: tf.Tensor) -> tf.Tensor:
  """RandomResizedCrop (area 8-100%, aspect 3/4-4/3), decoding only the crop.

  After 10 rejected draws the whole image is used (torchvision instead centre-crops).
  """
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.image.extract_jpeg_shape(jpeg),
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4)),
    seed=key,
    min_object_covered=0.0,
    aspect_ratio_range=(3 / 4, 4 / 3),
    area_range=(0.08, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def _resize_centre_crop(jpeg: tf.Tensor, size: int) -> tf.Tensor:
  """Resize the shorter side to `size / 0.875` (256 for 224), then crop the centre."""
  image = tf.io.decode_jpeg(jpeg, channels=3)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = round(size / _EVAL_CROP_FRACTION) / tf.reduce_min(hw)
  new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), size)
  image = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
  top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
  return image[top : top + size, left : left + size]


# --- Argument checks ----------------------------------------------------------------------


def _image_size(info: DatasetInfo, image_size: int | None) -> int:
  if image_size is None:
    return info.image_size
  _require(
    image_size == info.image_size or (info.name == "imagenet2012" and image_size > 0),
    f"{info.name!r} images are {info.image_size}x{info.image_size}; got image_size={image_size}.",
  )
  return image_size


def _check_batching(batch_size: int, process_index: int, process_count: int) -> None:
  _require(batch_size > 0, f"batch_size must be positive, got {batch_size}.")
  _require(
    0 <= process_index < process_count,
    f"Need 0 <= process_index < process_count, got {process_index}, {process_count}.",
  )


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)
