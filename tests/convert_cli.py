"""`python convert.py ARGS` run in this process, for the CLI tests (interop_cli_test, onnx_test).

`convert._main` runs with absl flags parsed as on the command line: a subprocess would spend most
of its time importing jax. tests/export_test.py runs the real entry point.
"""

import os

from absl import flags

from rmjax.commands import convert


def run_cli(capsys, *args):
  """`(exit code, stdout, stderr)` of `python convert.py ARGS`."""
  argv = flags.FLAGS(["convert.py", *map(str, args)])
  try:
    code = convert._main(argv)
  finally:
    flags.FLAGS.unparse_flags()
  out, err = capsys.readouterr()
  return code, out, err


def assert_fails(capsys, tmp_path, args, *messages):
  """`convert.py ARGS` exits 1 with one `error: ...` paragraph holding `messages`, no
  traceback, and leaves `tmp_path` as it was."""
  before = sorted(os.listdir(tmp_path))
  code, _, err = run_cli(capsys, *args)
  assert code == 1, err
  assert err.startswith("error: "), err
  for message in messages:
    assert message in err, err
  assert "Traceback" not in err
  assert sorted(os.listdir(tmp_path)) == before  # nothing written
