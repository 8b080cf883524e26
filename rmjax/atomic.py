"""Writing files and directories so that nobody ever reads half of one.

Everything rmjax writes (PLAIN directories, exports, reports, plots, summaries) is written to a
temporary sibling and renamed into place: on the same file system a rename is atomic, so a
crash, Ctrl-C or full disk leaves either the old file or the new one, never a mix.

  >>> write_text("report.md", text)
  >>> with staged_file("plot.png") as tmp:      # for writers that want a path
  ...   fig.savefig(tmp)
  >>> with staged_dir("PLAIN") as tmp:          # a directory, filled, then moved into place
  ...   write_files_into(tmp)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def staged_file(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` (same extension, for writers that infer the format
  from it); on a clean exit it replaces `path`, on an exception it is removed."""
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp-{os.getpid()}{ext}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with staged_file(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with staged_file(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json(path: str, content, *, indent: int = 1, sort_keys: bool = False) -> None:
  """Writes `content` as JSON (and a final newline) to `path` atomically."""
  write_text(path, json.dumps(content, indent=indent, sort_keys=sort_keys) + "\n")


@contextlib.contextmanager
def staged_dir(path: str) -> Iterator[str]:
  """Yields a new empty directory beside `path` with the usual permissions; on a clean exit it
  replaces `path` (see `replace`), on an exception it is deleted."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  # mkdtemp makes the directory private (0700); the result should have the usual permissions.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)
  try:
    yield tmp
    replace(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def replace(src: str, dst: str) -> None:
  """Moves the file or directory `src` to `dst` (same file system), replacing what is there:
  an old directory is moved aside first and deleted once the new one is in place."""
  if not os.path.isdir(dst):
    os.replace(src, dst)
    return
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
  try:
    os.rename(dst, os.path.join(old, "x"))
    os.rename(src, dst)
  finally:
    shutil.rmtree(old, ignore_errors=True)


def write_section(path: str, name: str, text: str) -> None:
  """Replaces the part of `path` between `<!-- NAME -->` and `<!-- /NAME -->` with `text`
  (appending the marked part if there is none), atomically; the rest is kept as written. How
  generated tables live in hand-written docs."""
  start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
  block = f"{start}\n{text.rstrip()}\n{end}"
  doc = open(path).read() if os.path.exists(path) else ""
  pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
  if pattern.search(doc):
    doc = pattern.sub(lambda _: block, doc)
  else:
    doc = doc.rstrip() + ("\n\n" if doc else "") + block + "\n"
  write_text(path, doc)
