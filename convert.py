"""Convert a training checkpoint into a plain network: `python convert.py CKPT PLAIN`.

CKPT is a workdir written by train.py (its latest checkpoint) or one step directory inside it,
`<workdir>/checkpoints/<step>`; the architecture comes from the run's config.json. PLAIN is a new
directory: `plain.json` (the layers, human-readable) and `variables/` (orbax), loadable with
`rmjax.load_plain(PLAIN)` without the original config.

Before writing, both networks run on a random batch (and with --eval_dataset on a real test
batch); the conversion is refused when max |logit difference| > tolerance x max(1, max |logit|).
The write is atomic: a failed or interrupted conversion leaves no PLAIN behind.

  python convert.py workdirs/demo workdirs/demo/plain
  python convert.py workdirs/demo/checkpoints/STEP /tmp/plain --keep_bn
  python convert.py workdirs/demo /tmp/plain --eval_dataset=fashion_mnist_small --overwrite
"""

import os
import sys

from absl import app, flags, logging

from rmjax import export

_KEEP_BN = flags.DEFINE_bool(
  "keep_bn",
  False,
  "Write the fine-tuning form (Appendix A.2): conv + BN + ReLU, reserved channels' BN set by "
  "Eq. 3, for `train.py --config.init_from=PLAIN`. Default: the deploy form (BN folded).",
)
_TOLERANCE = flags.DEFINE_float(
  "tolerance",
  1e-4,
  "Refuse to write if max |logit difference| exceeds tolerance x max(1, max |logit|) on a check "
  "batch (relative to the logit scale when logits exceed 1, absolute below).",
)
_EVAL_DATASET = flags.DEFINE_string(
  "eval_dataset",
  None,
  "Also check on one real test batch of this dataset (e.g. the run's own dataset).",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir for --eval_dataset.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing PLAIN directory.")
_DENSE_RESERVE = flags.DEFINE_bool(
  "dense_reserve",
  False,
  "Carry reserved channels through grouped/middle 3x3 convs densely, as the published PyTorch "
  "code does (bigger), instead of as Dirac groups.",
)
_FUSE = flags.DEFINE_bool(
  "fuse",
  True,
  "Fuse back-to-back 1x1 convs left by RM (Eq. 5; MobileNetV2 -> MobileNetV1).",
)


def main(argv):
  if len(argv) != 3:
    print(
      "usage: python convert.py CKPT PLAIN [flags]   (python convert.py --help)", file=sys.stderr
    )
    return 2
  _, ckpt, plain_dir = argv
  logging.set_verbosity(logging.WARNING)  # orbax is chatty; the report below is the output
  try:
    export.check_writable(os.path.abspath(plain_dir), _OVERWRITE.value)  # before the slow part
    print(f"loading {ckpt} ...", flush=True)
    run = export.load_run(ckpt)
    init_from = run.config.get("init_from")
    what = f"the plain network fine-tuned from {init_from}" if init_from else run.config.model
    print(f"converting {what} (step {run.step}) ...", flush=True)
    report = export.export_plain(
      run,
      plain_dir,
      keep_bn=_KEEP_BN.value,
      tolerance=_TOLERANCE.value,
      eval_dataset=_EVAL_DATASET.value,
      data_dir=_DATA_DIR.value,
      overwrite=_OVERWRITE.value,
      dense_reserve=_DENSE_RESERVE.value,
      fuse=_FUSE.value,
    )
  except export.ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(export.format_report(report))
  form = "fine-tuning form (BN kept)" if _KEEP_BN.value else "deploy form (BN folded)"
  print(f"wrote {report['plain_dir']} ({len(report['plain'].layers)} layers, {form})")
  return 0


if __name__ == "__main__":
  app.run(main)
