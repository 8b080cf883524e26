"""What `rmjax.bench.measure` measured: Markdown tables, JSON, a plot, docs/benchmarks.md.

>>> report = {"meta": measure.device_info(), "results": rows, "convert": convert_rows}
>>> print(markdown(report))
>>> write_json("bench.json", report); plot(report, "bench.png")
"""

from __future__ import annotations

from rmjax import atomic
from rmjax.bench import serving
from rmjax.bench.measure import FLOPS_TOLERANCE
from rmjax.bench.suites import PAPER_BASELINE, PAPER_IMAGENET


def _count(n: float, unit: str = "") -> str:
  for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= scale:
      return f"{n / scale:.2f}{suffix}{unit}"
  return f"{n:.0f}{unit}"


def _speed(row) -> str:
  if row["imgs_per_sec_min"] == row["imgs_per_sec_max"]:
    return f"{row['imgs_per_sec']:.1f}"
  return f"{row['imgs_per_sec']:.1f} ({row['imgs_per_sec_min']:.1f}–{row['imgs_per_sec_max']:.1f})"


def _torch_speed(row, prefix: str = "torch_") -> str:
  median = row.get(f"{prefix}imgs_per_sec")
  if median is None:
    return ""
  low, high = row[f"{prefix}imgs_per_sec_min"], row[f"{prefix}imgs_per_sec_max"]
  return f"{median:.1f}" if low == high else f"{median:.1f} ({low:.1f}–{high:.1f})"


def _ratio(row, prefix: str = "torch_") -> str:
  return "" if row.get(f"{prefix}ratio") is None else f"{row[f'{prefix}ratio']:.2f}"


def _compiled(rows) -> bool:
  """Whether any row has a torch.compile column (a timing, or a compilation abandoned)."""
  return any(r.get("torch_compiled_imgs_per_sec") or r.get("torch_compile_timed_out") for r in rows)


def _compiled_speed(row) -> str:
  return "timed out" if row.get("torch_compile_timed_out") else _torch_speed(row, "torch_compiled_")


def _torch_header(meta) -> str:
  """PyTorch's part of the header: version, device, threads, layout, torch.compile."""
  if not meta.get("torch_version"):
    return ""
  device = meta.get("torch_device", "cpu")
  where = f"{meta['torch_threads']} threads" if device == "cpu" else device
  if meta.get("torch_channels_last"):
    where += ", channels-last"
  if meta.get("torch_cudnn_benchmark"):
    where += ", `cudnn.benchmark`"
  text = (
    f" PyTorch {meta['torch_version']} ({where}): each network's twin "
    "(`rmjax.bench.torch_twins`, same weights, eval mode), same protocol and batch, its repeats "
    "taking turns with rmjax's."
  )
  if meta.get("torch_compile"):
    text += (
      f" `torch.compile` (mode {meta['torch_compile_mode']}, backend "
      f"{meta['torch_compile_backend']}, first call limited to {meta['torch_compile_timeout']:g} "
      f"s) of: {', '.join(meta['torch_compile'])}."
    )
  return text


def _precision_header(meta) -> str:
  """What float32 means on a GPU: TF32 convolutions, both frameworks' default."""
  if meta["platform"] != "gpu" or meta["dtype"] != "float32":
    return ""
  jax_precision = meta.get("jax_default_matmul_precision") or "default"
  torch = ""
  if meta.get("torch_version"):
    torch = (
      f"; PyTorch `torch.backends.cudnn.allow_tf32={meta.get('torch_cudnn_allow_tf32')}`, "
      f"matmuls `torch.backends.cuda.matmul.allow_tf32={meta.get('torch_matmul_allow_tf32')}`"
    )
  return (
    " float32 in each framework's default GPU precision: convolutions in TF32 (jax matmul "
    f"precision {jax_precision}{torch})."
  )


def header(meta) -> str:
  """One paragraph: device, versions, date, dtype, protocol (and PyTorch's, where timed)."""
  p = meta["protocol"]
  flags = f" XLA_FLAGS `{meta['xla_flags']}`." if meta.get("xla_flags") else ""
  tiny = (
    " **Tiny architectures** (`--tiny_models`: two stages of 1–2 blocks, 4–16 channels): a "
    "check of the code paths, not of speed."
    if meta.get("tiny_models")
    else ""
  )
  partial = (
    f" **Stopped early** ({meta['stopped']}): the tables hold what was measured until then."
    if meta.get("stopped")
    else ""
  )
  return (
    f"**{meta['device']}** ({meta['platform']}, {meta['cpu_count']} CPU cores visible), "
    f"jax {meta['jax_version']}, flax {meta['flax_version']}, {meta['date']}.{flags} "
    f"{meta['dtype']}, {meta['image_size']}x{meta['image_size']} inputs; "
    f"per network and batch size: {p['warmup']} warm-up batches, then {p['repeats']} x "
    f"{p['batches']} timed batches (imgs/s: median over the {p['repeats']} repeats, "
    f"(min–max)).{_precision_header(meta)}{_torch_header(meta)}{_engines_header(meta)}"
    f"{tiny}{partial}"
  )


def _engines_header(meta) -> str:
  text = serving.header(meta)
  return f" {text}" if text else ""


def speed_table(rows, batch_size: int, torch: bool = False) -> list[str]:
  """All columns at one batch size; with `torch`, PyTorch's imgs/s and rmjax / PyTorch too
  (blank for a network without a twin), and torch.compile's where any row has them."""
  rows = [r for r in rows if r["batch_size"] == batch_size]
  compiled = torch and _compiled(rows)
  extra = " PyTorch imgs/s | rmjax / PyTorch |" if torch else ""
  extra += " torch.compile imgs/s | rmjax / compiled |" if compiled else ""
  lines = [
    f"| network (batch {batch_size}) | params | MACs / img | XLA FLOPs / img (÷ analytical) "
    f"| peak memory | compile | imgs/s | speed-up | max abs logit diff |{extra}",
    "|---|---|---|---|---|---|---|---|---|" + "---|" * extra.count("|"),
  ]
  for r in rows:
    memory = "—" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f} MiB"
    agree = {True: "", False: " ⚠", None: " n/a"}[r["flops_agree"]]
    speedup = "—" if r["speedup"] is None else f"{r['speedup']:.2f}x"
    diff = "—" if r["max_abs_logit_diff"] is None else f"{r['max_abs_logit_diff']:.1e}"
    lines.append(
      f"| {r['network']} | {_count(r['params'])} | {_count(r['macs_per_image'])} "
      f"| {_count(r['xla_flops_per_image'])} ({r['flops_ratio']:.3f}{agree}) | {memory} "
      f"| {r['compile_seconds']:.1f} s | {_speed(r)} | {speedup} | {diff} |"
      + (f" {_torch_speed(r)} | {_ratio(r)} |" if torch else "")
      + (f" {_compiled_speed(r)} | {_ratio(r, 'torch_compiled_')} |" if compiled else "")
    )
  return lines


def _paper(row):
  """Table 3's imgs/s for the network of `row`, or None (not in Table 3 as this role)."""
  role, speed = PAPER_IMAGENET.get(row["group"], (None, None))
  return speed if role == row["role"] else None


def table3_table(rows, batch_size: int) -> list[str]:
  """Table 3's speed column (V100) beside this run's, as ratios to ResNet-50 (each framework's
  to its own ResNet-50): one line per network of the paper's groups at `batch_size`; none
  without a ResNet-50 row."""
  rows = [r for r in rows if r["batch_size"] == batch_size and r["group"] in PAPER_IMAGENET]
  base = next((r for r in rows if r["group"] == PAPER_BASELINE and r["role"] == "baseline"), None)
  if base is None:
    return []
  paper_base = PAPER_IMAGENET[PAPER_BASELINE][1]
  compiled = _compiled(rows)
  lines = [
    f"| network (batch {batch_size}) | paper imgs/s (V100) | paper ÷ ResNet-50 | rmjax imgs/s "
    "| rmjax ÷ ResNet-50 | PyTorch imgs/s | PyTorch ÷ ResNet-50 |"
    + (" torch.compile imgs/s | compiled ÷ ResNet-50 |" if compiled else ""),
    "|---|---|---|---|---|---|---|" + ("---|---|" if compiled else ""),
  ]

  def over(r, prefix):
    mine, theirs = r.get(f"{prefix}imgs_per_sec"), base.get(f"{prefix}imgs_per_sec")
    return "" if mine is None or not theirs else f"{mine / theirs:.2f}"

  for r in rows:
    paper = _paper(r)
    name = r["network"] + (" — default" if r.get("default") else "")
    lines.append(
      f"| {name} | {'' if paper is None else f'{paper:.1f}'} "
      f"| {'' if paper is None else f'{paper / paper_base:.2f}'} | {r['imgs_per_sec']:.1f} "
      f"| {over(r, '')} | {_torch_speed(r)} | {over(r, 'torch_')} |"
      + (f" {_compiled_speed(r)} | {over(r, 'torch_compiled_')} |" if compiled else "")
    )
  return lines


def default_line(rows) -> str:
  """Which form `plain.apply` runs each plain network in by default on this platform."""
  forms = {}
  for r in rows:
    if r["role"] == "plain" and r.get("default"):
      name, _, mode = r["network"].rpartition(" (")
      forms.setdefault(name, mode.rstrip(")").replace("auto", "mixed, per conv"))
  if not forms:
    return ""
  return (
    "Default execution (`plain.apply(variables, x)`: each conv dense or structured by "
    "`rmjax.models.structured.runs_structured`) on this platform: "
    + "; ".join(f"{name}: {mode}" for name, mode in forms.items())
    + "."
  )


def train_table(rows) -> list[str]:
  """The training step: rmjax's imgs/s beside PyTorch's (blank without torch), per network and
  batch size, its compute dtype, and each framework's loss at the first step (same weights:
  the same loss, to bfloat16's round-off in bfloat16)."""
  lines = [
    "| training step | batch | compute | compile | rmjax imgs/s | PyTorch imgs/s "
    "| rmjax / PyTorch | first-step loss: rmjax, PyTorch |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    losses = f"{r['first_loss']:.4f}"
    if r.get("torch_first_loss") is not None:
      losses += f", {r['torch_first_loss']:.4f}"
    lines.append(
      f"| {r['network']} | {r['batch_size']} | {r.get('compute_dtype', 'float32')} "
      f"| {r['compile_seconds']:.1f} s | {_speed(r)} "
      f"| {_torch_speed(r, 'torch_train_')} | {_ratio(r)} | {losses} |"
    )
  return lines


def sweep_table(rows) -> list[str]:
  """imgs/s (and speed-up) per batch size, one row per network."""
  sizes = sorted({r["batch_size"] for r in rows})
  names = list(dict.fromkeys(r["network"] for r in rows))
  by = {(r["network"], r["batch_size"]): r for r in rows}
  lines = [
    "| network | " + " | ".join(f"batch {b}" for b in sizes) + " |",
    "|---|" + "---|" * len(sizes),
  ]
  for name in names:
    cells = []
    for b in sizes:
      r = by.get((name, b))
      if r is None:
        cells.append("")
        continue
      speedup = "" if r["speedup"] is None else f" ({r['speedup']:.2f}x)"
      cells.append(f"{r['imgs_per_sec']:.1f}{speedup}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def precision_table(rows) -> list[str]:
  """Max |logit difference| of each plain network from its source at each precision."""
  prefix = "max_abs_logit_diff_"
  names = [k.removeprefix(prefix) for k in rows[0] if k.startswith(prefix)]
  lines = [
    f"| network (batch {rows[0]['batch_size']}) | max abs logit (source) | "
    + " | ".join(f"max abs logit diff, {n} precision | ÷ max(1, max abs logit)" for n in names)
    + " |",
    "|---|---|" + "---|---|" * len(names),
  ]
  for r in rows:
    scale = max(1.0, r["max_abs_logit"])
    cells = [f"{r[prefix + n]:.1e} | {r[prefix + n] / scale:.1e}" for n in names]
    lines.append(f"| {r['network']} | {r['max_abs_logit']:.2f} | " + " | ".join(cells) + " |")
  return lines


def layers_table(rows) -> list[str]:
  """Dense vs structured, conv by conv, and summed by network and kind (count-weighted)."""
  lines = [
    "| network | layer | conv | input | kind | saving | layers like it | dense ms "
    "| structured ms | structured ÷ dense | rule picks |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    shape = "x".join(str(d) for d in r["input_shape"])
    lines.append(
      f"| {r['network']} | {r['layer']} | {r['conv']} | {shape} | {r['kind']} | {r['saving']:.2f} "
      f"| {r['count']} | {r['dense_ms']:.3f} | {r['structured_ms']:.3f} | {r['ratio']:.2f} "
      f"| {'structured' if r['rule'] else 'dense'} |"
    )
  totals: dict[tuple[str, str], list] = {}
  for r in rows:
    t = totals.setdefault((r["network"], r["kind"]), [0, 0.0, 0.0, []])
    t[0] += r["count"]
    t[1] += r["count"] * r["dense_ms"]
    t[2] += r["count"] * r["structured_ms"]
    t[3].append(r["saving"])
  lines += [
    "",
    "| network | kind | convs | saving | dense ms (sum) | structured ms (sum) "
    "| structured ÷ dense |",
    "|---|---|---|---|---|---|---|",
  ]
  for (network, kind), (count, dense, structured, savings) in totals.items():
    lines.append(
      f"| {network} | {kind} | {count} | {min(savings):.2f}–{max(savings):.2f} | {dense:.2f} "
      f"| {structured:.2f} | {structured / dense:.2f} |"
    )
  return lines


def convert_table(rows) -> list[str]:
  lines = [
    "| model | form | params: residual → plain | trace + lower | compile | call (median, min) |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    form = "keep_bn" if r["keep_bn"] else "deploy"
    lines.append(
      f"| {r['model']} ({r['image_size']}x{r['image_size']}) | {form} "
      f"| {_count(r['params_before'])} → {_count(r['params_after'])} | {r['lower_seconds']:.2f} s "
      f"| {r['compile_seconds']:.2f} s | {r['call_ms']:.1f} ms, {r['call_ms_min']:.1f} ms |"
    )
  return lines


def markdown(report) -> str:
  """The whole report: header, one table per batch size, the sweep, rm_convert timings."""
  meta, rows = report["meta"], report["results"]
  sizes = sorted({r["batch_size"] for r in rows})
  torch = bool(meta.get("torch_version"))
  parts = [header(meta), ""]
  for b in sizes:
    table3 = table3_table(rows, b)
    if table3:
      parts += ["Table 3's speed column: imgs/s as a ratio to ResNet-50 (the paper: V100).", ""]
      parts += [*table3, ""]
  for b in sizes:
    parts += [*speed_table(rows, b, torch), ""]
  if default_line(rows):
    parts += [default_line(rows), ""]
  parts += serving.section(report)
  if len(sizes) > 1:
    parts += ["imgs/s by batch size (speed-up over the group's baseline):", ""]
    parts += [*sweep_table(rows), ""]
  if report.get("train"):
    parts += [
      "Training step (`--train_steps`): forward in training mode, cross-entropy, backward, SGD "
      "with momentum and weight decay (`rmjax.bench.training`; PyTorch: `torch.optim.SGD`):",
      "",
    ]
    parts += [*train_table(report["train"]), ""]
  if report.get("precision"):
    parts += [
      "Max |logit difference| of each plain network from the network it was converted from, "
      "at jax's default matmul precision (on a GPU: TF32 convolutions) and at "
      '`jax.default_matmul_precision("highest")` (full float32), same batch '
      "(`--precision_check`):",
      "",
    ]
    parts += [*precision_table(report["precision"]), ""]
  if report.get("layers"):
    parts += [
      "Dense vs structured execution conv by conv (`--layer_timings`): each distinct structured "
      "conv (+ its ReLU) alone, in turn, ms per batch; *saving*: the fraction of its "
      "multiply-adds structured execution skips; *rule picks*: `runs_structured` here.",
      "",
    ]
    parts += [*layers_table(report["layers"]), ""]
  if report.get("convert"):
    parts += ["`jax.jit(rm_convert)` with random variables (compiled once, then called):", ""]
    parts += [*convert_table(report["convert"]), ""]
  parts.append(
    "MACs count every kernel tap (the papers' FLOPs). XLA's cost analysis counts 2 FLOPs per "
    "multiply-add, skips taps on zero padding and adds one per element of bias, ReLU, BN and "
    "pooling; the analytical count of that (`rmjax.cost.count_flops`) matches the program "
    f"given to XLA within {FLOPS_TOLERANCE:.1%} (⚠ where not; n/a where XLA gives no count, as on "
    "GPUs, whose cost analysis leaves out cuDNN's convolutions). The compiled program's FLOPs "
    "are shown, with their ratio to that count: fusion recomputes cheap elementwise ops in each "
    "consumer. Speed-up: over the first network of the group; logit difference: from the "
    "network it was converted from, on the timed batch."
    + (
      " PyTorch: the twin of a plain network is its dense form, whatever mode rmjax runs it in; "
      "rmjax / PyTorch is the ratio of imgs/s (above 1: rmjax is faster)."
      if torch
      else ""
    )
  )
  return "\n".join(parts) + "\n"


def write_json(path: str, report) -> None:
  atomic.write_json(path, report)


def plot(report, path: str) -> None:
  """Fig. 11's two rows against batch size: speed-up of each plain network over its group's
  baseline, and imgs/s (median, min–max band). One colour per group, one line style per mode."""
  import matplotlib  # Deferred: only the benchmark draws (the "plots" extra).

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = report["results"]
  groups = list(dict.fromkeys(r["group"] for r in rows))
  colours = plt.get_cmap("tab10")
  styles = {"": "-", "dense": "--", "structured": ":"}
  plt.rcParams.update({"legend.fontsize": 7})
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
  for name in dict.fromkeys(r["network"] for r in rows):
    mine = sorted((r for r in rows if r["network"] == name), key=lambda r: r["batch_size"])
    sizes = [r["batch_size"] for r in mine]
    style = dict(
      color=colours(groups.index(mine[0]["group"]) % 10),
      ls=styles.get(mine[0]["mode"], "-."),
      marker="o" if mine[0]["role"] == "baseline" else "s",
      label=name,
    )
    bottom.plot(sizes, [r["imgs_per_sec"] for r in mine], **style)
    low, high = [r["imgs_per_sec_min"] for r in mine], [r["imgs_per_sec_max"] for r in mine]
    bottom.fill_between(sizes, low, high, color=style["color"], alpha=0.12)
    if mine[0]["speedup"] is not None:
      top.plot(sizes, [r["speedup"] for r in mine], **style)
  top.axhline(1.0, color="gray", lw=0.8)
  top.set_ylabel("speed-up over the group's baseline")
  bottom.set_xscale("log", base=2)
  sizes = sorted({r["batch_size"] for r in rows})
  bottom.set_xticks(sizes, [str(b) for b in sizes])
  bottom.set_yscale("log")
  bottom.set_xlabel("batch size")
  bottom.set_ylabel("imgs/s")
  fig.legend(*bottom.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(0.73, 0.5))
  fig.subplots_adjust(left=0.08, right=0.72, top=0.94, bottom=0.07, hspace=0.06)
  meta = report["meta"]
  fig.suptitle(f"{meta['device']} · jax {meta['jax_version']} · {meta['dtype']}", fontsize=9)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def update_docs(path: str, section: str, text: str) -> None:
  """Replaces the part of `path` between `<!-- bench:SECTION -->` and `<!-- /bench:SECTION -->`
  with `text` (appending the marked part if there is none); the rest is kept as written."""
  atomic.write_section(path, f"bench:{section}", text)
