"""Input pipelines: the embedded dataset end to end, determinism and resume, multi-process eval
shares, and (with tfds' mock data) the CIFAR and ImageNet preprocessing."""

import hashlib
import importlib.resources
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rmjax import data
from rmjax.datasets import fashion_mnist_small

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # Full official Fashion-MNIST train split.
SMALL = "fashion_mnist_small"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A fresh data_dir; the embedded dataset is prepared into it by the first pipeline call."""
  path = str(tmp_path_factory.mktemp("tfds"))
  next(data.eval_batches(SMALL, batch_size=8, data_dir=path))
  return path


@pytest.fixture(scope="module")
def arrays():
  return fashion_mnist_small.load_arrays()


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def eval_pass(data_dir, **kwargs):
  """All eval batches concatenated, plus the number of batches."""
  batches = list(data.eval_batches(SMALL, data_dir=data_dir, **kwargs))
  joined = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
  return joined, len(batches)


def fashion_pixels(images):
  """Eval images back to pixel values in [0, 255]: (the 28x28 centre, the whole 32x32)."""
  pixels = (images[..., 0] * FASHION_STD + FASHION_MEAN) * 255
  return pixels[:, 2:30, 2:30], pixels


# --- The embedded dataset --------------------------------------------------------------------


def test_embedded_data_is_stratified(arrays):
  assert arrays["train_images"].shape == (10_000, 28, 28)
  assert arrays["test_images"].shape == (2_000, 28, 28)
  assert all(a.dtype == np.uint8 for a in arrays.values())
  np.testing.assert_array_equal(np.bincount(arrays["train_labels"], minlength=10), [1000] * 10)
  np.testing.assert_array_equal(np.bincount(arrays["test_labels"], minlength=10), [200] * 10)


def test_embedded_data_matches_its_provenance():
  files = importlib.resources.files("rmjax.datasets") / "fashion_mnist_small"
  digest = hashlib.sha256((files / "data.npz").read_bytes()).hexdigest()
  assert f"sha256 `{digest}`" in (files / "PROVENANCE.md").read_text()
  assert "Zalando SE" in (files / "LICENSE").read_text()


def test_prepared_automatically_from_package_data(data_dir):
  builder = fashion_mnist_small.FashionMnistSmall(data_dir=data_dir)
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 10_000
  assert builder.info.features["label"].names[9] == "Ankle boot"


def test_train_batches_shapes_and_normalisation(data_dir):
  batch = next(data.train_batches(SMALL, batch_size=256, seed=0, data_dir=data_dir))
  assert batch["image"].shape == (256, 32, 32, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (256,) and batch["label"].dtype == np.int32
  assert 0 <= batch["label"].min() and batch["label"].max() < 10
  # Zero padding (28 -> 32, then the pad-4 crop) darkens images a little: mean ~ -0.2.
  assert abs(batch["image"].mean()) < 0.35
  assert 0.7 < batch["image"].std() < 1.3


def test_eval_covers_test_split_in_order_with_mask(data_dir, arrays):
  batch_size = 300  # 2000 = 6 * 300 + 200: the last batch has 100 padded examples.
  joined, num_batches = eval_pass(data_dir, batch_size=batch_size)
  assert num_batches == 7
  assert joined["image"].shape == (7 * batch_size, 32, 32, 1)
  assert joined["label"].dtype == np.int32 and joined["mask"].dtype == np.float32
  np.testing.assert_array_equal(joined["mask"], [1.0] * 2000 + [0.0] * 100)
  real = joined["mask"] == 1
  np.testing.assert_array_equal(joined["label"][real], arrays["test_labels"])
  centre, padded = fashion_pixels(joined["image"][real])
  np.testing.assert_allclose(centre, arrays["test_images"], atol=0.01)
  assert np.abs(padded[:, :2]).max() < 0.01  # The padding is black.


@pytest.mark.parametrize("process_count", [2, 3])
def test_eval_shares_are_disjoint_and_cover_the_split(data_dir, arrays, process_count):
  shares = [
    eval_pass(data_dir, batch_size=250, process_index=i, process_count=process_count)
    for i in range(process_count)
  ]
  assert len({num_batches for _, num_batches in shares}) == 1  # Lockstep across processes.
  # Shares are contiguous ranges in process order; joined, they are the split exactly once.
  labels = np.concatenate([s["label"][s["mask"] == 1] for s, _ in shares])
  images = np.concatenate([s["image"][s["mask"] == 1] for s, _ in shares])
  np.testing.assert_array_equal(labels, arrays["test_labels"])
  np.testing.assert_allclose(fashion_pixels(images)[0], arrays["test_images"], atol=0.01)


# --- Determinism and resume ------------------------------------------------------------------


def train(data_dir, **kwargs):
  # 10 steps per epoch, so a few dozen steps cross epoch boundaries cheaply.
  return data.train_batches(SMALL, batch_size=1000, data_dir=data_dir, **kwargs)


@pytest.fixture(scope="module")
def two_epochs(data_dir):
  """The first 20 batches (two epochs) of an uninterrupted run with seed 3."""
  return take(train(data_dir, seed=3), 20)


def test_resume_yields_the_uninterrupted_batches(data_dir, two_epochs):
  for start in (0, 8, 10, 13):  # Within epoch 0, crossing into epoch 1, at and after it.
    resumed = take(train(data_dir, seed=3, start_step=start), 3)
    for step, batch in enumerate(resumed, start):
      np.testing.assert_array_equal(batch["label"], two_epochs[step]["label"], f"step {step}")
      np.testing.assert_array_equal(batch["image"], two_epochs[step]["image"], f"step {step}")


def test_order_depends_on_seed_and_epoch(data_dir, two_epochs):
  other_seed = next(train(data_dir, seed=4))
  assert not np.array_equal(two_epochs[0]["label"], other_seed["label"])
  assert not np.array_equal(two_epochs[0]["label"], two_epochs[10]["label"])


def test_an_epoch_sees_each_example_once(arrays, two_epochs):
  for epoch in (two_epochs[:10], two_epochs[10:]):
    counts = np.bincount(np.concatenate([b["label"] for b in epoch]), minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(arrays["train_labels"]))


def test_processes_read_disjoint_train_shares(data_dir):
  labels = [
    np.concatenate(
      [b["label"] for b in take(train(data_dir, seed=0, process_index=i, process_count=2), 5)]
    )
    for i in range(2)
  ]
  # Each share of 5000 is one epoch of 5 batches; together they hold every example once.
  np.testing.assert_array_equal(np.bincount(np.concatenate(labels)), [1000] * 10)


# --- CIFAR and ImageNet on tfds' mock data ---------------------------------------------------
# No dataset metadata is available offline, so the mocks draw random examples from the
# features that the tfds builders define in code (MockPolicy.USE_CODE).


def mock_data(num_examples):
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def unnormalised(images, name):
  recipe = data._RECIPES[name]
  return images * np.array(recipe.std) + np.array(recipe.mean)


def test_cifar10_on_mock_data(tmp_path):
  with mock_data(num_examples=40):
    batch = next(data.train_batches("cifar10", batch_size=16, seed=0, data_dir=str(tmp_path)))
    evals = list(data.eval_batches("cifar10", batch_size=16, data_dir=str(tmp_path)))
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
  assert 0 <= batch["label"].min() and batch["label"].max() < 10
  assert [e["mask"].sum() for e in evals] == [16, 16, 8]
  # Mock pixels are uniform in [0, 255]: un-normalised they fill [0, 1] with mean 1/2.
  pixels = unnormalised(evals[0]["image"], "cifar10")
  assert -1e-5 < pixels.min() and pixels.max() < 1 + 1e-5
  np.testing.assert_allclose(pixels.mean(axis=(0, 1, 2)), 0.5, atol=0.05)


def test_imagenet_on_mock_data(tmp_path):
  with mock_data(num_examples=6):
    it = data.train_batches("imagenet2012", batch_size=4, seed=0, data_dir=str(tmp_path))
    train_batch = next(it)
    small = next(
      data.train_batches(
        "imagenet2012", batch_size=4, seed=0, image_size=64, data_dir=str(tmp_path)
      )
    )
    evals = list(data.eval_batches("imagenet2012", batch_size=4, data_dir=str(tmp_path)))
  assert train_batch["image"].shape == (4, 224, 224, 3)
  assert small["image"].shape == (4, 64, 64, 3)
  assert 0 <= train_batch["label"].min() and train_batch["label"].max() < 1000
  assert [e["image"].shape for e in evals] == [(4, 224, 224, 3)] * 2
  assert [e["mask"].sum() for e in evals] == [4, 2]
  for images in (train_batch["image"], evals[0]["image"]):
    pixels = unnormalised(images, "imagenet2012")
    assert -1e-4 < pixels.min() and pixels.max() < 1 + 1e-4
    assert 0.25 < pixels.mean() < 0.75


# --- Errors ----------------------------------------------------------------------------------


def test_unknown_dataset_lists_known_names():
  with pytest.raises(ValueError, match="known datasets") as error:
    data.dataset_info("mnist")
  assert all(name in str(error.value) for name in data.DATASETS)
  with pytest.raises(ValueError, match="cifar100"):
    data.train_batches("cifar1000", batch_size=8, seed=0)


def test_missing_imagenet_says_where_the_manual_files_go(tmp_path):
  for make in (
    lambda: data.train_batches("imagenet2012", batch_size=8, seed=0, data_dir=str(tmp_path)),
    lambda: data.eval_batches("imagenet2012", batch_size=8, data_dir=str(tmp_path)),
  ):
    with pytest.raises(data.DatasetNotFoundError) as error:
      make()
    message = str(error.value)
    assert "downloads/manual" in message and str(tmp_path) in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert os.listdir(tmp_path) == []  # tfds's empty downloads/ and imagenet2012/ are removed


@pytest.mark.parametrize(
  "kwargs",
  [
    {"batch_size": 0},
    {"batch_size": 20_000},  # More than the train split.
    {"batch_size": 8, "process_index": 2, "process_count": 2},
    {"batch_size": 8, "image_size": 64},  # 32x32 datasets keep their size.
    {"batch_size": 8, "seed": -1},
  ],
)
def test_bad_arguments(data_dir, kwargs):
  with pytest.raises(ValueError):
    data.train_batches(SMALL, **{"seed": 0, **kwargs}, data_dir=data_dir)


def test_datasets_info_is_static():
  info = data.dataset_info("imagenet2012")
  assert (info.num_classes, info.image_size, info.test_split) == (1000, 224, "validation")
  assert data.dataset_info(SMALL) == data.DatasetInfo(
    SMALL, 10, 32, 1, 10_000, 2_000, "train", "test"
  )


def test_transforms_do_not_import_tensorflow():
  code = "import sys, rmjax.transforms; assert 'tensorflow' not in sys.modules, 'tf imported'"
  subprocess.run([sys.executable, "-c", code], check=True)
