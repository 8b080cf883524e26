"""Reports: TensorBoard event files readable by TensorFlow's reader, atomic metrics.json."""

import glob
import json
import os

import tensorflow as tf

from rmjax import summary


def test_event_file_holds_the_scalars(tmp_path):
  writer = summary.MetricWriter(str(tmp_path))
  writer.write_scalars(3, {"train/loss": 1.5, "train/accuracy": 0.25})
  writer.write_scalars(7, {"train/loss": 0.5})
  writer.write_json("metrics.json", {"eval_top1": 0.9})
  writer.close()
  (path,) = glob.glob(os.path.join(tmp_path, "events.out.tfevents.*"))
  seen = []
  for event in tf.compat.v1.train.summary_iterator(path):
    seen += [(event.step, v.tag, round(v.simple_value, 4)) for v in event.summary.value]
  assert seen == [(3, "train/loss", 1.5), (3, "train/accuracy", 0.25), (7, "train/loss", 0.5)]
  assert json.load(open(tmp_path / "metrics.json")) == {"eval_top1": 0.9}
  assert not os.path.exists(tmp_path / "metrics.json.tmp")


def test_disabled_writer_writes_nothing(tmp_path):
  writer = summary.MetricWriter(str(tmp_path / "off"), enabled=False)
  writer.write_scalars(1, {"x": 1.0})
  writer.write_json("metrics.json", {})
  writer.close()
  assert not os.path.exists(tmp_path / "off")
