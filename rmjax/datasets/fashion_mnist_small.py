"""tfds builder for the Fashion-MNIST subset embedded in `rmjax/datasets/fashion_mnist_small/`.

The data (`data.npz`, 10,000 train and 2,000 test images, stratified; see `PROVENANCE.md` there)
ships with the package, so preparing needs no network and takes a few seconds. The prepared
files are tfrecord. Parquet, the one tfds format that both tf.data and grain read, is not used:
tensorflow-datasets 4.9.10 silently drops rows when writing it (its `_batched` helper slices a
consumed iterator; 10,000 examples come out as 1,300). For grain, convert the prepared dataset
to array_record with `tfds convert_format` (needs apache-beam).

>>> builder = prepare("/tmp/tfds")
>>> ds = builder.as_dataset(split="test")  # examples in the order of data.npz
"""

from __future__ import annotations

import fcntl
import importlib.resources
import os

import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)


def load_arrays() -> dict[str, np.ndarray]:
  """The embedded arrays: `{train,test}_{images,labels}`, uint8, images (N, 28, 28).

  >>> load_arrays()["test_labels"].shape
  (2000,)
  """
  data = importlib.resources.files("rmjax.datasets").joinpath("fashion_mnist_small/data.npz")
  with data.open("rb") as f, np.load(f) as npz:
    return {name: npz[name] for name in npz.files}


def default_data_dir() -> str:
  """Where the embedded dataset is prepared when no data_dir is given: the user's cache.

  Not tfds' default (~/tensorflow_datasets), since this is derived data that can be rebuilt.
  """
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "rmjax", "tensorflow_datasets")


class FashionMnistSmall(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST, 1,000 train / 200 test images per class, read from package data."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=(
        "A class-stratified subset of Fashion-MNIST (Zalando Research, MIT licence): "
        "1,000 train and 200 test 28x28 grayscale images per class, shipped with rmjax."
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(28, 28, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://github.com/zalandoresearch/fashion-mnist",
      # Keep the order of data.npz, so the test split can be checked label by label.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    arrays = load_arrays()
    return {
      split: self._generate_examples(arrays[f"{split}_images"], arrays[f"{split}_labels"])
      for split in ("train", "test")
    }

  def _generate_examples(self, images, labels):
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
      yield index, {"image": image[:, :, None], "label": int(label)}


def prepare(data_dir: str | None = None) -> FashionMnistSmall:
  """The builder, prepared under `data_dir` (default `default_data_dir()`); a no-op if done.

  >>> prepare("/tmp/tfds").info.splits["train"].num_examples
  10000
  """
  data_dir = data_dir or default_data_dir()
  builder = FashionMnistSmall(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  # Several processes (multi-host on one machine, parallel tests) may start at once: one
  # prepares, the others wait for it and then find the data ready.
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".fashion_mnist_small.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = FashionMnistSmall(data_dir=data_dir)
    if not builder.is_prepared():
      builder.download_and_prepare(file_format="tfrecord")
  return builder
