"""rmjax.deploy.onnx_structured: the structured ONNX form of an RM plain network computes what the
plain network computes (ONNX Runtime, both layouts), with its Dirac convs rewritten as copies
and adds, and fewer multiply-adds in its Conv nodes than the dense form."""

import functools

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from rmjax import verify  # noqa: E402
from rmjax.bench import measure, suites  # noqa: E402
from rmjax.deploy import onnx as onnx_export  # noqa: E402
from rmjax.deploy import onnx_structured  # noqa: E402


def _conv_weights(model) -> int:
  """Elements of the Conv kernels: proportional to their multiply-adds at a fixed shape."""
  sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
  return sum(sizes[n.input[1]] for n in model.graph.node if n.op_type == "Conv")


@functools.cache
def _plain(suite: str):
  """The plain network of a suite, tiny (built once per suite)."""
  settings = suites.Settings(modes=("dense",), tiny=True)
  (net,) = [n for n in suites.build([suite], settings) if n.role == "plain"]
  return net


@pytest.mark.parametrize("suite", ["resnet18", "mobilenet", "rmnext26"])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_structured_onnx_computes_the_plain_network(suite, layout):
  net = _plain(suite)
  x = np.asarray(measure.images(3, 32))
  model = onnx_structured.to_structured_onnx(net.model, net.variables, (32, 32, 3), layout=layout)
  onnx.checker.check_model(model, full_check=True)
  ops = [n.op_type for n in model.graph.node]
  assert "Concat" in ops or "Add" in ops  # copies concatenated, shortcuts added
  dense = onnx_export.to_onnx(net.model, net.variables, (32, 32, 3), layout=layout)
  assert _conv_weights(model) < _conv_weights(dense)
  session = onnx_export._session(model.SerializeToString(), 2)
  got = session.run(None, {"images": x if layout == "nhwc" else x.transpose(0, 3, 1, 2)})[0]
  want = verify.eval_logits(net.model, net.variables, x)
  assert verify.within(verify.difference(want, got)), verify.difference(want, got)


def test_convert_exports_the_structured_form_checked_and_sealed(tmp_path):
  from rmjax import deploy, export, integrity, run
  from rmjax.models import create
  from rmjax.randomize import random_variables

  model = create("resnet18", num_classes=10, stem="cifar", widths=(8, 8, 16, 16), stem_width=8)
  x = np.asarray(measure.images(2, 32))
  variables = random_variables(model, x)
  source = run.Run("weights", None, None, model, variables, (32, 32, 3), {"model": "resnet18"})
  report = export.export_plain(source, str(tmp_path / "plain"), exports=("onnx_structured",))
  path = deploy.artefact_path(str(tmp_path / "plain"), "onnx_structured")
  assert path.endswith("plain.structured.onnx")
  assert report["exports"]["onnx_structured"]["path"] == path
  integrity.check(path)  # sealed
  ops = [n.op_type for n in onnx.load(path).graph.node]
  assert "Slice" in ops and "Add" in ops  # the reserved copies and merged shortcuts
  got = deploy.LOADERS["onnx_structured"](path)(x)
  want = verify.eval_logits(model, variables, x)
  assert verify.within(verify.difference(want, got))
