"""What the absl entry points that take `--config` share (train.py, slim.py): flag parsing with
one-line errors, `--config_help`, the default workdir, and logs without libraries' chatter."""

from __future__ import annotations

import ast
import importlib
import io
import logging as std_logging
import os
import sys
import textwrap
import tokenize

from absl import app, flags, logging

_KEY_HINT = (
  "--config.KEY can only set keys that the config file defines (model arguments go under "
  "model_kwargs; add new ones to the config file first; --config_help lists them)"
)


def default_workdir(config_path: str) -> str:
  """`workdirs/<config file name>` for `--config configs/NAME.py[:args]`."""
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("workdirs", name)


def _config_path(argv) -> str | None:
  """The file `--config FILE` / `--config=FILE[:args]` names, if any."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":")[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":")[0]
  return None


def parse_flags(argv):
  """absl's parsing, with one line instead of a traceback for a config file that does not exist
  or a `--config.KEY` the config does not have (ml_collections raises from deep inside the flag
  parser), and `--config_help` answered before `--config` is required."""
  if "--config_help" in argv:
    print(config_help())
    sys.exit(0)
  path = _config_path(argv)
  if path is not None and not os.path.isfile(path):
    sys.exit(f"error: the config file {path} does not exist (see configs/ for the ones there are)")
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    while isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):
      e = e.args[0]  # ml_collections wraps the KeyError that says which key
    message = str(e.args[0]) if e.args else str(e)
    key, _, hint = message.partition("\n")
    hint = f" ({hint.strip()})" if hint.strip() else ""
    print(
      f"error: the config has no key {key.strip(chr(34) + chr(39))!r} to override{hint}: "
      + _KEY_HINT,
      file=sys.stderr,
    )
    sys.exit(2)


def _comments(source: str) -> dict[int, str]:
  """Comment text by line number."""
  tokens = tokenize.generate_tokens(io.StringIO(source).readline)
  return {t.start[0]: t.string.lstrip("# ").rstrip() for t in tokens if t.type == tokenize.COMMENT}


def config_help(module: str = "configs.default") -> str:
  """Every key of the default config with its default and the comments beside and above it in
  `configs/default.py`: what `train.py --config_help` prints."""
  default = importlib.import_module(module)
  source = open(default.__file__).read()
  comments = _comments(source)
  comment_only = {n for n, text in enumerate(source.splitlines(), 1) if text.strip()[:1] == "#"}
  config = default.get_config()
  lines = [f"Config keys (defaults from {os.path.relpath(default.__file__)}):"]
  for node in ast.walk(ast.parse(source)):
    if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)):
      continue
    target = node.targets[0]
    if not (isinstance(target.value, ast.Name) and target.value.id == "config"):
      continue
    above, line = [], node.lineno - 1
    while line in comment_only:
      above.insert(0, comments[line])
      line -= 1
    note = " ".join(above + ([comments[node.lineno]] if node.lineno in comments else []))
    value = config[target.attr]
    shown = "{}" if hasattr(value, "to_dict") and not value.to_dict() else repr(value)
    lines.append(f"  {target.attr} = {shown}")
    if note:
      lines.append(textwrap.fill(note, 98, initial_indent=" " * 6, subsequent_indent=" " * 6))
  return "\n".join(lines)


class _LibraryChatter(std_logging.Filter):
  """Drops INFO lines that do not come from rmjax or its scripts (orbax and TensorStore log
  ~40 per checkpoint, jax one per missing backend)."""

  def __init__(self, roots: tuple[str, ...]):
    super().__init__()
    self.roots = roots

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING or logging.get_verbosity() >= 1:
      return True
    return os.path.abspath(record.pathname).startswith(self.roots)


def quiet_libraries() -> None:
  """Keeps libraries' INFO logs out of the output unless `--verbosity=1` (or more) asks."""
  roots = [os.path.dirname(os.path.abspath(__file__)) + os.sep]
  if sys.argv and sys.argv[0]:
    roots.append(os.path.abspath(sys.argv[0]))  # the entry script itself
  logging.get_absl_handler().addFilter(_LibraryChatter(tuple(roots)))


def run(main, doc: str, *, config: bool = False) -> None:
  """Runs an absl `main` as a command-line tool: `--help` shows `doc` (absl reads the `__main__`
  module's docstring, which a console script's wrapper lacks); with `config`, flag parsing as
  `parse_flags` does it (one-line errors, `--config_help`)."""
  sys.modules["__main__"].__doc__ = doc
  # `--help` lists the main module's flags, named by sys.argv[0] (the root shim or the console
  # script), not the command module that defines them.
  for flag in flags.FLAGS.get_key_flags_for_module(main.__module__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, **({"flags_parser": parse_flags} if config else {}))


def define_overwrite(what: str, module_name: str) -> flags.FlagHolder[bool]:
  """The `--overwrite` flag of the command `module_name` that writes the directory `what`."""
  return flags.DEFINE_bool(
    "overwrite", False, f"Replace an existing {what} directory.", module_name=module_name
  )
