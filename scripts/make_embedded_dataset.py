"""Writes the embedded Fashion-MNIST subset that ships in `rmjax/datasets/fashion_mnist_small/`.

Reads the original IDX files (Debian package `dataset-fashion-mnist`), takes a class-stratified
subset with a fixed seed and writes `data.npz` and `PROVENANCE.md`. The output is byte-for-byte
reproducible, so rerunning it and comparing the sha256 in `PROVENANCE.md` verifies the data.

  $ apt-get install -y dataset-fashion-mnist
  $ .venv/bin/python scripts/make_embedded_dataset.py
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pathlib
import subprocess
import zipfile

import numpy as np

SOURCE_PACKAGE = "dataset-fashion-mnist"
SOURCE_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "rmjax/datasets/fashion_mnist_small"
FILES = {
  "train_images": "train-images-idx3-ubyte.gz",
  "train_labels": "train-labels-idx1-ubyte.gz",
  "test_images": "t10k-images-idx3-ubyte.gz",
  "test_labels": "t10k-labels-idx1-ubyte.gz",
}
PER_CLASS = {"train": 1000, "test": 200}
NUM_CLASSES = 10
SEED = 0


def read_idx(path: pathlib.Path) -> np.ndarray:
  """An IDX file (big-endian header: zero, zero, dtype code, ndim, then one uint32 per dim).

  >>> read_idx(SOURCE_DIR / "t10k-labels-idx1-ubyte.gz").shape
  (10000,)
  """
  raw = gzip.decompress(path.read_bytes())
  if raw[:3] != b"\0\0\x08":  # Fashion-MNIST only uses the unsigned-byte code 0x08.
    raise ValueError(f"{path}: not a uint8 IDX file (header {raw[:4].hex()})")
  ndim = raw[3]
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
  """`per_class` indices of each class drawn without replacement, sorted (original order kept).

  >>> stratified_indices(np.array([0, 1, 0, 1]), 1, np.random.default_rng(0)).size
  2
  """
  picks = [
    rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(NUM_CLASSES)
  ]
  return np.sort(np.concatenate(picks))


def write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """Like `np.savez_compressed`, but with fixed zip timestamps so the bytes are reproducible."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
    for name, array in arrays.items():
      buffer = io.BytesIO()
      np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      zf.writestr(info, buffer.getvalue(), compresslevel=9)


def sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def package_version(package: str) -> str:
  try:
    out = subprocess.run(
      ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown (dpkg-query failed)"


def provenance(source_dir: pathlib.Path, out_dir: pathlib.Path, seed: int) -> str:
  source_rows = "\n".join(
    f"| `{name}` | `{sha256(source_dir / name)}` |" for name in FILES.values()
  )
  split_rows = "\n".join(
    f"- {split}: {k} images per class ({k * NUM_CLASSES} in all) from the official {split} split."
    for split, k in PER_CLASS.items()
  )
  return f"""# Provenance of `fashion_mnist_small`

A class-stratified subset of Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017, Zalando Research;
MIT licence, see `LICENSE`), small enough to ship with rmjax so training runs offline.

## Source

Debian package `{SOURCE_PACKAGE}` version `{package_version(SOURCE_PACKAGE)}`, files in
`{source_dir}`:

| file | sha256 |
|---|---|
{source_rows}

## Selection

{split_rows}
- `rng = numpy.random.default_rng({seed})`; for the train split, then the test split, and for each
  class 0..9 in turn: `rng.choice(indices_of_class, per_class, replace=False)`. The chosen indices
  are sorted, so examples keep their order in the official files.
- Images are stored as raw 28x28 uint8 (padding to 32x32 happens in `rmjax.data`), labels as
  uint8.

## Output

`data.npz`: arrays `train_images` (10000, 28, 28), `train_labels` (10000,), `test_images`
(2000, 28, 28), `test_labels` (2000,); a zip of `.npy` files with fixed timestamps (readable with
`numpy.load`).

sha256 `{sha256(out_dir / "data.npz")}`

## Regenerate

```
apt-get install -y {SOURCE_PACKAGE}
.venv/bin/python scripts/make_embedded_dataset.py
```
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source_dir", type=pathlib.Path, default=SOURCE_DIR)
  parser.add_argument("--out_dir", type=pathlib.Path, default=OUT_DIR)
  parser.add_argument("--seed", type=int, default=SEED)
  args = parser.parse_args()

  rng = np.random.default_rng(args.seed)
  arrays = {}
  for split, per_class in PER_CLASS.items():
    images = read_idx(args.source_dir / FILES[f"{split}_images"])
    labels = read_idx(args.source_dir / FILES[f"{split}_labels"])
    keep = stratified_indices(labels, per_class, rng)
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[keep], labels[keep]

  args.out_dir.mkdir(parents=True, exist_ok=True)
  write_npz(args.out_dir / "data.npz", arrays)
  (args.out_dir / "PROVENANCE.md").write_text(provenance(args.source_dir, args.out_dir, args.seed))
  print(f"wrote {args.out_dir} ({(args.out_dir / 'data.npz').stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
