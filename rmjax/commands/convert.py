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

Your own weights instead of a checkpoint (rmjax.interop; needs `pip install 'rmjax[interop]'`):
the "original" is then the rmjax model holding the imported weights.

  python convert.py --from_torch resnet50 resnet50.pth /tmp/plain     # torchvision layout
  python convert.py --from_torch rmnet:resnet18 rmnet18.pth.tar /tmp/plain   # the RMNet code's
  python convert.py --from_keras mobilenet_v2.keras /tmp/plain        # or .h5

Serving artefacts of the plain network, next to PLAIN (checked against it before anything is
written): --export stablehlo -> PLAIN.stablehlo, --export savedmodel -> PLAIN.savedmodel/,
--export onnx -> PLAIN.onnx (needs `pip install 'rmjax[deploy]'`), --export onnx_structured ->
PLAIN.structured.onnx (RM's Dirac convs as copies and adds: the faster ONNX for RM networks).

Post-training int8 (docs/quantization.md): --quantize int8 also writes PLAIN.int8.onnx, an
ONNX Runtime QDQ model calibrated on the dataset's train split, refused (nothing written) when
its test top-1 is more than --int8_max_drop (default 1.0) points below float32's:

  python convert.py workdirs/demo /tmp/plain --export onnx --quantize int8 \
    --calibration_dataset fashion_mnist_small --calibration_batches 8

Backbone mode, --features: PLAIN records the model's feature taps, every check compares the
feature maps, and the artefacts output them (docs/backbones.md).

  python convert.py workdirs/demo /tmp/backbone --features --export stablehlo,onnx
"""

import os
import sys

from absl import flags

from rmjax import cli, export, run
from rmjax.deploy import quantize

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
_OVERWRITE = cli.define_overwrite("PLAIN", __name__)
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
_FEATURES = flags.DEFINE_bool(
  "features",
  False,
  "Backbone mode: PLAIN also records where the model's feature maps are (the last block of "
  "each stage; plain.apply(..., features=True) returns them), the checks compare those maps, "
  "and --export artefacts output them (one output per map: features_0, features_1, ...) "
  "instead of the logits.",
)
_FROM_TORCH = flags.DEFINE_string(
  "from_torch",
  None,
  "Import PyTorch weights instead of a checkpoint: `convert.py --from_torch ARCH WEIGHTS "
  "PLAIN`, ARCH one of torchvision's resnet18, resnet34, resnet50, resnet101, resnet152, "
  "mobilenet_v2, or CODE:ARCH for another code base's layout, train- or deploy-time: "
  "rmnet:resnet18, rmnet:rmnext50x6_32, rmnet:mobilenetv2, ... (the published RMNet code), "
  "repvgg:repvgg_a0 (the RepVGG code), timm:repvgg_a0 (rmjax.interop.TORCH_LAYOUTS lists "
  "them); WEIGHTS a .pth/.pt/.pth.tar state dict or a .safetensors file.",
)
_FROM_KERAS = flags.DEFINE_bool(
  "from_keras",
  False,
  "Import a Keras MobileNetV2 instead of a checkpoint: `convert.py --from_keras WEIGHTS "
  "PLAIN`, WEIGHTS a .keras or .h5 model file (width, head and classes read from it).",
)
_INPUT_SIZE = flags.DEFINE_integer(
  "input_size",
  None,
  "Imported weights: the side of the square images of the check batch (default: the Keras "
  "file's input shape, else 224). Also the image size of --export artefacts.",
)
_EXPORT = flags.DEFINE_list(
  "export",
  [],
  "Also write serving artefacts of the plain network, next to PLAIN: stablehlo -> "
  "PLAIN.stablehlo (a jax.export file), savedmodel -> PLAIN.savedmodel/ (TensorFlow, via "
  "jax2tf), onnx -> PLAIN.onnx (opset 21, run and checked in ONNX Runtime; needs "
  "`pip install 'rmjax[deploy]'`), onnx_structured -> PLAIN.structured.onnx (the same with RM's "
  "Dirac convs as copies and adds, the faster one in ONNX Runtime for RM networks). "
  "Comma-separated; NHWC float32 images, any batch size. Each "
  "is reloaded and checked against PLAIN.",
)

_QUANTIZE = flags.DEFINE_enum(
  "quantize",
  None,
  ["int8"],
  "int8: also write PLAIN.int8.onnx, static post-training int8 (ONNX Runtime QDQ, per-channel "
  "int8 weights, uint8 activations) calibrated on --calibration_dataset's train split; refused "
  "(nothing written) when its test top-1 is more than --int8_max_drop points below float32's. "
  "Implies --export onnx. Needs `pip install 'rmjax[deploy]'`.",
)
_CALIBRATION_DATASET = flags.DEFINE_string(
  "calibration_dataset",
  None,
  "--quantize: the dataset whose train split calibrates and whose test split checks the int8 "
  "model (default: the run's own dataset).",
)
_CALIBRATION_BATCHES = flags.DEFINE_integer(
  "calibration_batches", 8, "--quantize: calibration batches (64 images each)."
)
_INT8_MAX_DROP = flags.DEFINE_float(
  "int8_max_drop",
  quantize.DEFAULT_MAX_DROP,
  "--quantize: the most top-1 percentage points int8 may lose against float32.",
)
_EQUALIZE = flags.DEFINE_bool(
  "equalize_reserved",
  False,
  "--quantize: first rescale reserved channels to their own channels' activation range "
  "(rmjax.transforms.equalize; exact in float32). Off by default: measured, it changes nothing "
  "on the networks of docs/quantization.md.",
)


def _quantize_options(loaded: run.Run) -> dict | None:
  """`export_plain`'s `quantize` argument from the flags, checked before the conversion."""
  if _QUANTIZE.value is None:
    return None
  dataset = _CALIBRATION_DATASET.value or (loaded.config.dataset if loaded.config else None)
  if not dataset:
    raise run.RunError("--quantize int8 needs --calibration_dataset (imported weights name none)")
  try:
    quantize.require()
    quantize.check_dataset(dataset)
  except (ImportError, quantize.QuantizationError) as e:
    raise run.RunError(str(e)) from None
  return {
    "dataset": dataset,
    "num_batches": _CALIBRATION_BATCHES.value,
    "max_drop": _INT8_MAX_DROP.value,
    "equalize": _EQUALIZE.value,
    "data_dir": _DATA_DIR.value,
  }


def _load(source: str) -> run.Run:
  if _FROM_TORCH.value is not None and _FROM_KERAS.value:
    raise run.RunError("give --from_torch ARCH or --from_keras, not both")
  if _FROM_TORCH.value is not None or _FROM_KERAS.value:
    print(f"importing {source} ...", flush=True)
    loaded = run.load_imported(source, torch_arch=_FROM_TORCH.value, input_size=_INPUT_SIZE.value)
    for note in loaded.origin["notes"]:
      print(f"note: {note}")
    shape = "x".join(map(str, loaded.input_shape))
    print(f"converting {loaded.name} (checked on {shape} inputs) ...", flush=True)
    return loaded
  if _INPUT_SIZE.value is not None:
    raise run.RunError("--input_size is for imported weights (--from_torch/--from_keras)")
  print(f"loading {source} ...", flush=True)
  loaded = run.load_run(source)
  init_from = loaded.config.get("init_from")
  what = f"the plain network fine-tuned from {init_from}" if init_from else loaded.config.model
  print(f"converting {what} (step {loaded.step}) ...", flush=True)
  return loaded


def _main(argv):
  if len(argv) != 3:
    print(
      "usage: python convert.py CKPT PLAIN [flags]\n"
      "       python convert.py --from_torch ARCH WEIGHTS PLAIN [flags]\n"
      "       python convert.py --from_keras WEIGHTS PLAIN [flags]   (python convert.py --help)",
      file=sys.stderr,
    )
    return 2
  _, source, plain_dir = argv
  cli.quiet_libraries()  # orbax is chatty; rmjax's progress lines and the report stay
  exports = tuple(_EXPORT.value)
  if _QUANTIZE.value and "onnx" not in exports:
    exports += ("onnx",)
    print("note: --quantize int8 also writes the float32 ONNX model (implies --export onnx)")
  try:
    # Before the slow part.
    quantized = _QUANTIZE.value is not None
    export.check_writable(os.path.abspath(plain_dir), _OVERWRITE.value, exports, quantize=quantized)
    loaded = _load(source)
    quantize_options = _quantize_options(loaded)
    report = export.export_plain(
      loaded,
      plain_dir,
      keep_bn=_KEEP_BN.value,
      tolerance=_TOLERANCE.value,
      eval_dataset=_EVAL_DATASET.value,
      data_dir=_DATA_DIR.value,
      overwrite=_OVERWRITE.value,
      dense_reserve=_DENSE_RESERVE.value,
      fuse=_FUSE.value,
      exports=exports,
      features=_FEATURES.value,
      quantize=quantize_options,
    )
  except (run.RunError, export.ExportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(export.format_report(report))
  form = "fine-tuning form (BN kept)" if _KEEP_BN.value else "deploy form (BN folded)"
  taps = report["plain"].taps
  form += f", {len(taps)} feature maps" if taps else ""
  print(f"wrote {report['plain_dir']} ({len(report['plain'].layers)} layers, {form})")
  for fmt, c in report.get("exports", {}).items():
    print(f"wrote {c['path']} ({fmt})")
  if report.get("int8"):
    print(f"wrote {report['int8']['path']} (onnx, int8 QDQ)")
  return 0


def main() -> None:
  """The `rmjax-convert` console script and `python convert.py`."""
  cli.run(_main, __doc__)
