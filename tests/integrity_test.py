"""rmjax.integrity: digests of file and directory artefacts, and the names of non-finite weights."""

import logging
import os
import shutil
import subprocess

import numpy as np
import pytest

from rmjax import integrity
from rmjax.testing import flip_byte


def make_tree(root):
  (root / "sub").mkdir(parents=True)
  (root / "a.json").write_text('{"x": 1}')
  (root / "sub" / "data").write_bytes(np.arange(1000, dtype=np.float32).tobytes())
  return str(root)


def test_a_directory_round_trips_and_every_flipped_byte_is_named(tmp_path):
  root = make_tree(tmp_path / "art")
  digest = integrity.seal(root)
  assert digest == os.path.join(root, "SHA256SUMS")
  assert integrity.check(root) is True
  data = os.path.join(root, "sub", "data")
  for offset in (0, 1, 1999, 3999):
    flip_byte(data, offset)
    with pytest.raises(integrity.DigestError, match=f"{data} is damaged"):
      integrity.check(root)
    flip_byte(data, offset)  # back
  assert integrity.check(root)
  os.remove(data)
  with pytest.raises(integrity.DigestError, match=f"{data}, listed in {digest}, is missing"):
    integrity.check(root)


def test_a_file_has_its_digest_beside_it_and_survives_a_rename(tmp_path):
  path = tmp_path / "net.stablehlo"
  path.write_bytes(b"\x00\x01" * 500)
  assert integrity.seal(str(path)) == f"{path}.sha256"
  assert integrity.check(str(path))
  os.rename(path, tmp_path / "other.stablehlo")
  os.rename(f"{path}.sha256", tmp_path / "other.stablehlo.sha256")
  assert integrity.check(str(tmp_path / "other.stablehlo"))
  flip_byte(tmp_path / "other.stablehlo", 700)
  with pytest.raises(integrity.DigestError, match="other.stablehlo is damaged"):
    integrity.check(str(tmp_path / "other.stablehlo"))


def test_extra_files_are_allowed_but_a_damaged_digest_is_not(tmp_path):
  root = make_tree(tmp_path / "art")
  integrity.seal(root)
  (tmp_path / "art" / "README").write_text("added later")  # orbax adds commit_success.txt
  assert integrity.check(root)
  digest = tmp_path / "art" / "SHA256SUMS"
  digest.write_text(digest.read_text().replace("  a.json", " a.json"))
  with pytest.raises(integrity.DigestError, match="SHA256SUMS is damaged"):
    integrity.check(root)
  digest.write_text("")
  with pytest.raises(integrity.DigestError, match="SHA256SUMS is empty"):
    integrity.check(root)


def test_no_digest_loads_with_a_warning(tmp_path, caplog):
  root = make_tree(tmp_path / "old")
  with caplog.at_level(logging.WARNING):
    assert integrity.check(root) is False
  assert f"{root} has no SHA-256 digest (SHA256SUMS)" in caplog.text


def test_sha256sum_reads_the_digest(tmp_path):
  if not shutil.which("sha256sum"):
    pytest.skip("no sha256sum")
  root = make_tree(tmp_path / "art")
  integrity.seal(root)
  result = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=root, capture_output=True)
  assert result.returncode == 0 and result.stdout.count(b": OK") == 2, result


def test_non_finite_arrays_are_named():
  variables = {
    "params": {"a": {"kernel": np.array([1.0, np.nan, np.inf, np.nan])}, "b": np.ones(3)},
    "batch_stats": {"c": np.array([-np.inf], np.float32)},
    "step": np.array(3),
  }
  assert integrity.nonfinite_arrays(variables) == [
    "params/a/kernel (2 NaN, 1 inf of 4)",
    "batch_stats/c (1 inf of 1)",
  ]
  with pytest.raises(integrity.NonFiniteError, match=r"ckpt holds non-finite .* in 2 array\(s\)"):
    integrity.check_finite(variables, "ckpt")
  integrity.check_finite({"params": {"b": np.ones(3)}}, "fine")
