"""The pruning pipeline of Fig. 4, run against its ResNet baseline: Fig. 7 in miniature.

One sparse network, two ways to slim it, the same fine-tuning budget for both (Sec. 4.2, 5.1):

  sparsity training (L1 on BN scales, a BN on every identity shortcut)     `sparse/`
    -> RM, fine-tuning form (verified, as `convert.py --keep_bn`)          `plain/`
       -> prune(threshold)               -> fine-tune -> deploy form       `rmnet_t<T>/`
    -> prune_resnet(threshold): block-inner channels only -> fine-tune     `resnet_t<T>/`

Every step resumes: a finished training run is read back, an interrupted one continues from its
checkpoint. The report times every network the same way (jitted inference, median of repeats)
and counts its parameters and MACs:

  >>> rows = run_pipeline(config, "workdirs/slim_resnet20")
  >>> print(format_table(rows))
  >>> plot(rows, "pruning.png")
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from rmjax import atomic, compare, evaluation, export, plain_io, pruning, run, train, transforms
from rmjax.cost import count_macs, count_params


def check_config(config) -> None:
  """ValueError where `config` cannot run the pipeline (before any training)."""
  prune = config.get("prune")
  if prune is None:
    raise ValueError(
      "the config has no `prune` section (thresholds, finetune_epochs, ...): see "
      "configs/slim_resnet20.py"
    )
  if not config.sparsity > 0:
    raise ValueError(
      f"config.sparsity is {config.sparsity}: network slimming needs an L1 penalty "
      "on the BN scales (> 0; the paper uses 1e-4 ... 1e-3)"
    )
  if not str(config.model).startswith("resnet"):
    raise ValueError(
      f"the pipeline compares RM pruning with slimming a ResNet; config.model is "
      f"{config.model!r}, not a ResNet"
    )
  if not config.model_kwargs.get("shortcut_bn"):
    raise ValueError(
      "config.model_kwargs.shortcut_bn must be True: the BN on each identity shortcut gives "
      "the channels RM reserves an importance score to prune by (Sec. 4.2)"
    )
  thresholds = tuple(prune.thresholds)
  if not thresholds or any(not t > 0 for t in thresholds):
    raise ValueError(f"prune.thresholds must be positive numbers, got {thresholds}")


def finetune_config(config, **changes) -> ml_collections.ConfigDict:
  """The fine-tuning run's config: the training config without the L1 penalty, for
  `prune.finetune_epochs` at `prune.finetune_learning_rate`, plus `changes`."""
  ft = ml_collections.ConfigDict(config.to_dict())
  ft.sparsity = 0.0
  ft.num_epochs = config.prune.finetune_epochs
  ft.num_train_steps = -1
  ft.learning_rate = config.prune.finetune_learning_rate
  ft.eval_every_epochs = config.prune.finetune_epochs  # once, at the end
  ft.compare_plain = False
  del ft["prune"]
  for key, value in changes.items():
    if key == "inner_widths":
      ft.model_kwargs.inner_widths = value
    else:
      ft[key] = value
  return ft


def _trained(config, workdir: str, **kwargs) -> dict[str, Any]:
  """The metrics of training `config` in `workdir`; a run that already finished is read back."""
  path = os.path.join(workdir, "metrics.json")
  if os.path.exists(path):
    with open(path) as f:
      metrics = json.load(f)
    if metrics.get("step", 0) >= train.num_steps(config):
      logging.info("%s: finished earlier (step %d), reusing it", workdir, metrics["step"])
      return metrics
  return train.train_and_evaluate(config, workdir, **kwargs).metrics


def _threshold_name(t: float) -> str:
  return f"t{t:g}"


def run_pipeline(config, workdir: str) -> list[dict[str, Any]]:
  """Runs (or resumes) the whole pipeline in `workdir`; returns one row per network.

  Rows: the sparse ResNet and its RM form (unpruned, threshold 0), then per threshold the
  fine-tuned pruned RMNet and pruned ResNet. Each row has `network`, `threshold`, `params`,
  `macs`, `imgs_per_sec`, `top1` (after fine-tuning), `top1_pruned` (before it) and the
  workdir of its run.
  """
  check_config(config)
  workdir = os.path.abspath(workdir)
  sparse_dir = os.path.join(workdir, "sparse")
  logging.info("1/3 sparsity training (L1 %g on BN scales) in %s", config.sparsity, sparse_dir)
  sparse_metrics = _trained(config, sparse_dir)
  sparse = run.load_run(sparse_dir)
  plain_dir = os.path.join(workdir, "plain")
  logging.info("2/3 RM conversion (fine-tuning form) to %s", plain_dir)
  report = export.export_plain(sparse, plain_dir, keep_bn=True, overwrite=True)
  logging.info("conversion check:\n%s", export.format_report(report))
  plain, plain_vars = plain_io.load_plain(plain_dir)

  top1 = sparse_metrics["eval_top1"]  # RM is exact: one accuracy for both unpruned networks
  networks = [
    _network("ResNet", 0.0, sparse.model, sparse.variables, top1, top1, sparse_dir),
    _plain_network("RMNet", 0.0, plain, plain_vars, top1, top1, plain_dir),
  ]
  for t in config.prune.thresholds:
    logging.info("3/3 threshold %g: prune the RMNet and the ResNet, fine-tune both", t)
    rm_dir = os.path.join(workdir, f"rmnet_{_threshold_name(t)}")
    pruned_dir = os.path.join(rm_dir, "pruned")
    logging.info(
      "pruned at %g:\n%s", t, pruning.prune_plain_dir(plain_dir, pruned_dir, t, overwrite=True)
    )
    tuned_dir = os.path.join(rm_dir, "tuned")
    metrics = _trained(finetune_config(config, init_from=pruned_dir), tuned_dir)
    tuned = run.load_run(tuned_dir)
    networks.append(
      _plain_network("RMNet", t, tuned.model, tuned.variables, *_top1(metrics), tuned_dir)
    )

    res_dir = os.path.join(workdir, f"resnet_{_threshold_name(t)}")
    slim, slim_vars, _ = transforms.prune_resnet(sparse.model, sparse.variables, t)
    ft = finetune_config(config, inner_widths=[list(w) for w in slim.inner_widths])
    metrics = _trained(ft, res_dir, init_variables=slim_vars)
    tuned = run.load_run(res_dir)
    networks.append(_network("ResNet", t, tuned.model, tuned.variables, *_top1(metrics), res_dir))
  for n in networks:  # relative: the report may be read from anywhere (docs/pruning.json)
    n["workdir"] = os.path.relpath(n["workdir"], workdir)
  return measure(networks, sparse.input_shape, batch_size=config.prune.speed_batch_size)


def _top1(metrics) -> tuple[float, float | None]:
  """Top-1 after fine-tuning, and of the pruned network before it (the run's first eval)."""
  return metrics["eval_top1"], metrics.get("init_eval_top1")


def _network(kind, threshold, model, variables, top1, top1_pruned, workdir):
  return {
    "network": kind,
    "threshold": float(threshold),
    "apply": evaluation.eval_apply_fn(model),
    "variables": variables,
    "top1": top1,
    "top1_pruned": top1_pruned,
    "workdir": workdir,
  }


def _plain_network(kind, threshold, plain, variables, top1, top1_pruned, workdir):
  """A plain network in its deploy form (BN folded), as it would be served."""
  deploy, deploy_vars = transforms.rm_convert(plain, variables)
  return _network(kind, threshold, deploy, deploy_vars, top1, top1_pruned, workdir)


def measure(networks, input_shape, *, batch_size: int = 128, repeats: int = 10):
  """Params, MACs (one image) and jitted imgs/s at `batch_size` of every network; the rows."""
  images = jax.random.normal(jax.random.key(0), (batch_size, *input_shape), jnp.float32)
  one = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  rows = []
  for i, n in enumerate(networks):
    logging.info(
      "timing %d/%d: %s at threshold %g", i + 1, len(networks), n["network"], n["threshold"]
    )
    rows.append(
      {
        "network": n["network"],
        "threshold": n["threshold"],
        "params": count_params(n["variables"]["params"]),
        "macs": count_macs(n["apply"], n["variables"], one),
        "imgs_per_sec": compare.inference_speed(
          n["apply"], n["variables"], images, repeats=repeats
        ),
        "top1": n["top1"],
        "top1_pruned": n["top1_pruned"],
        "workdir": n["workdir"],
      }
    )
  for r in rows:  # relative to the same network unpruned
    base = next(b for b in rows if b["network"] == r["network"] and b["threshold"] == 0)
    r["params_removed"] = 1 - r["params"] / base["params"]
    r["macs_removed"] = 1 - r["macs"] / base["macs"]
  return rows


def format_table(rows) -> str:
  """The rows as a Markdown table (threshold 0 = unpruned, not fine-tuned)."""
  lines = [
    "| network | threshold | params | removed | MACs | removed | imgs/s | top-1 pruned "
    "| top-1 fine-tuned |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in sorted(rows, key=lambda r: (r["threshold"], r["network"])):
    pruned = "—" if r["top1_pruned"] is None else f"{100 * r['top1_pruned']:.2f}%"
    lines.append(
      f"| {r['network']} | {r['threshold']:g} | {r['params']:,} | {r['params_removed']:.1%} "
      f"| {r['macs']:,} | {r['macs_removed']:.1%} | {r['imgs_per_sec']:.0f} | {pruned} "
      f"| {100 * r['top1']:.2f}% |"
    )
  return "\n".join(lines)


def plot(rows, path: str, *, title: str = "") -> None:
  """Fig. 7 in miniature: top-1 vs imgs/s (a) and vs the fraction of parameters removed (b),
  one line per network kind, points labelled with their threshold. Written atomically."""
  import matplotlib  # A plotting dependency only for this (the `plots` extra).

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for kind, marker in (("ResNet", "s"), ("RMNet", "o")):
    mine = sorted((r for r in rows if r["network"] == kind), key=lambda r: r["threshold"])
    top1 = [100 * r["top1"] for r in mine]
    speeds = [r["imgs_per_sec"] for r in mine]
    removed = [100 * r["params_removed"] for r in mine]
    for ax, x in zip(axes, (speeds, removed), strict=True):
      ax.plot(x, top1, marker=marker, label=f"pruned {kind}")
      for xi, yi, r in zip(x, top1, mine, strict=True):
        ax.annotate(f"{r['threshold']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4))
  axes[0].set(xlabel="inference speed (imgs/s)", ylabel="top-1 accuracy (%)", title="(a)")
  axes[1].set(xlabel="parameters removed (%)", ylabel="top-1 accuracy (%)", title="(b)")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  with atomic.staged_file(path) as tmp:
    fig.savefig(tmp, dpi=100)
  plt.close(fig)
