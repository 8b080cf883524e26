"""The serving tables of the report: every engine side by side, and the best rmjax artefact.

Each row of `rmjax.bench.measure.run` holds rmjax's XLA speed, the PyTorch twin's (`torch_*`)
and, for a plain network, its ONNX artefact's in ONNX Runtime (`onnxruntime_*`, int8:
`onnxruntime_int8_*`; `rmjax.bench.onnx_timing`). `engines_table` shows them per batch size;
`best_table` answers "which path to deploy": for each function (a network and the plain forms
converted from it compute the same logits: the row's `computes`) and batch size, the fastest
float32 rmjax artefact (XLA in any mode, or ORT) against the fastest PyTorch eager twin of it.

  >>> print("\\n".join(engines_table(rows, 128)))
  >>> print("\\n".join(best_table(rows)))
"""

from __future__ import annotations

from rmjax.bench.onnx_timing import ENGINE, INT8

# The goal of issue 18: the best rmjax artefact at least this many times PyTorch eager's imgs/s.
GOAL = 1.2


def has_engines(rows) -> bool:
  """Whether any row has an ONNX Runtime column (timed, or refused)."""
  return any(r.get(f"{ENGINE}_imgs_per_sec") or r.get(f"{ENGINE}_refused") for r in rows)


def header(meta) -> str:
  """ORT's part of the report's header: version, threads, layout; engines skipped and why."""
  text = ""
  if meta.get("onnxruntime_version"):
    int8 = ", and its int8 form (`rmjax.deploy.quantize`)" if meta.get("onnxruntime_int8") else ""
    text = (
      f"ONNX Runtime {meta['onnxruntime_version']} (CPU provider, "
      f"{meta['onnxruntime_threads']} intra-op threads, float32, "
      f"{meta['onnxruntime_layout'].upper()} input): each plain network's ONNX export "
      f"(`rmjax.deploy.onnx.to_onnx`; in a structured row its structured form, "
      f"`rmjax.deploy.onnx_structured`){int8}, checked against the JAX network on the bench batch "
      "and refused (not timed) where it differs; same protocol and batch, in turn with rmjax's."
    )
  skipped = meta.get("engines_skipped") or {}
  if skipped:
    text += " Skipped: " + "; ".join(f"{e} ({why})" for e, why in skipped.items()) + "."
  return text.strip()


def _speed(row, prefix: str) -> str:
  median = row.get(f"{prefix}imgs_per_sec")
  if median is None:
    return f"refused: {row[f'{prefix}refused']}" if row.get(f"{prefix}refused") else ""
  low, high = row[f"{prefix}imgs_per_sec_min"], row[f"{prefix}imgs_per_sec_max"]
  return f"{median:.1f}" if low == high else f"{median:.1f} ({low:.1f}–{high:.1f})"


def _ratio(value) -> str:
  return "" if value is None else f"{value:.2f}"


def _diff(value) -> str:
  return "" if value is None else f"{value:.1e}"


def engines_table(rows, batch_size: int) -> list[str]:
  """imgs/s of each engine on each network at `batch_size`: XLA, the PyTorch twin, ORT (and
  ORT int8 where any row has it), ORT ÷ PyTorch, and ORT's max |logit diff| from JAX."""
  rows = [r for r in rows if r["batch_size"] == batch_size]
  int8 = any(r.get(f"{INT8}_imgs_per_sec") or r.get(f"{INT8}_refused") for r in rows)
  lines = [
    f"| network (batch {batch_size}) | XLA imgs/s | PyTorch eager imgs/s | ONNX Runtime imgs/s "
    "| ORT ÷ PyTorch | ORT ÷ XLA | ORT max abs logit diff |"
    + (" ORT int8 imgs/s | int8 ÷ PyTorch | int8 max abs logit diff |" if int8 else ""),
    "|---|---|---|---|---|---|---|" + ("---|---|---|" if int8 else ""),
  ]
  for r in rows:
    torch = r.get("torch_imgs_per_sec")
    lines.append(
      f"| {r['network']} | {r['imgs_per_sec']:.1f} | {'' if torch is None else f'{torch:.1f}'} "
      f"| {_speed(r, f'{ENGINE}_')} | {_ratio(r.get(f'{ENGINE}_torch_ratio'))} "
      f"| {_ratio(r.get(f'{ENGINE}_ratio'))} | {_diff(r.get(f'{ENGINE}_max_abs_logit_diff'))} |"
      + (
        f" {_speed(r, f'{INT8}_')} | {_ratio(r.get(f'{INT8}_torch_ratio'))} "
        f"| {_diff(r.get(f'{INT8}_max_abs_logit_diff'))} |"
        if int8
        else ""
      )
    )
  return lines


def _candidates(row) -> list[tuple[float, str, float]]:
  """(imgs/s, artefact, its fastest repeat's imgs/s) of each float32 rmjax artefact of `row`."""
  found = [(row["imgs_per_sec"], f"XLA, {row['network']}", row["imgs_per_sec_max"])]
  if row.get(f"{ENGINE}_imgs_per_sec") is not None:
    name = f"ONNX Runtime, {row['network']}"
    found.append((row[f"{ENGINE}_imgs_per_sec"], name, row[f"{ENGINE}_imgs_per_sec_max"]))
  return found


def _twin(row) -> str:
  """Which twin a row's PyTorch columns timed: a plain network's is its dense form's."""
  mode = row.get("mode")
  if row.get("torch_twin") != "dense" or mode in (None, "", "dense"):
    return row["network"]
  return f"{row['network'].removesuffix(f' ({mode})')} (dense), beside the {mode} row"


def best(rows) -> list[dict]:
  """For each function (`computes`) and batch size: the fastest rmjax artefact and the fastest
  PyTorch eager twin of it, their ratio (None without a twin), the fastest int8 artefact (ORT,
  where timed: `int8`, `int8_ratio` ÷ PyTorch, `int8_vs_float32` ÷ the best float32 artefact)
  and the ratio of those two's
  fastest repeats (`ratio_fastest`: less sensitive to another job slowing some repeats down —
  PyTorch's threads collapse under such load, docs/benchmarks.md). A function is named by the
  first network of the rows that computes it; functions in the rows' order, then by batch."""
  out: dict[tuple, dict] = {}
  names: dict[str, str] = {}
  for r in rows:
    function = r.get("computes", r["network"])
    names.setdefault(function, r["network"])
    key = (function, r["batch_size"])
    entry = out.setdefault(key, {"computes": names[function], "batch_size": key[1]})
    entry["rmjax"] = max(entry.get("rmjax", (0.0, "", 0.0)), *_candidates(r))
    torch = r.get("torch_imgs_per_sec")
    if torch is not None and torch > entry.get("torch", (0.0,))[0]:
      entry["torch"] = (torch, _twin(r), r["torch_imgs_per_sec_max"])
    int8 = r.get(f"{INT8}_imgs_per_sec")
    if int8 is not None and int8 > entry.get("int8", (0.0,))[0]:
      entry["int8"] = (int8, f"ONNX Runtime int8, {r['network']}")
  order = list(names)
  for (function, _), entry in out.items():
    torch, int8 = entry.get("torch"), entry.get("int8")
    entry["ratio"] = entry["rmjax"][0] / torch[0] if torch else None
    entry["int8_ratio"] = int8[0] / torch[0] if torch and int8 else None
    entry["int8_vs_float32"] = int8[0] / entry["rmjax"][0] if int8 else None
    entry["ratio_fastest"] = entry["rmjax"][2] / torch[2] if torch else None
    entry["order"] = order.index(function)
  return sorted(out.values(), key=lambda e: (e.pop("order"), e["batch_size"]))


def best_table(rows) -> list[str]:
  """`best` as Markdown, one line per function and batch size, the goal marked."""
  lines = [
    "| network | batch | best rmjax artefact | imgs/s | fastest PyTorch eager twin "
    f"| imgs/s | rmjax ÷ PyTorch | ≥ {GOAL}x | ÷, fastest repeats "
    "| int8 imgs/s (ORT) | int8 ÷ PyTorch | int8 ÷ best float32 |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for e in best(rows):
    torch, int8 = e.get("torch"), e.get("int8")
    met = "" if e["ratio"] is None else ("yes" if e["ratio"] >= GOAL else "**no**")
    lines.append(
      f"| {e['computes']} | {e['batch_size']} | {e['rmjax'][1]} | {e['rmjax'][0]:.1f} "
      f"| {torch[1] if torch else ''} | {f'{torch[0]:.1f}' if torch else ''} "
      f"| {_ratio(e['ratio'])} | {met} | {_ratio(e['ratio_fastest'])} "
      f"| {f'{int8[0]:.1f}' if int8 else ''} | {_ratio(e['int8_ratio'])} "
      f"| {_ratio(e['int8_vs_float32'])} |"
    )
  return lines


def section(report) -> list[str]:
  """The serving part of the Markdown report (nothing where no engine but XLA ran)."""
  rows = report["results"]
  if not has_engines(rows):
    return []
  parts = ["Serving engines: the same networks in each engine (imgs/s).", ""]
  for b in sorted({r["batch_size"] for r in rows}):
    parts += [*engines_table(rows, b), ""]
  parts += [
    "Best rmjax artefact (float32: XLA in any mode, or ONNX Runtime) beside the fastest PyTorch "
    "eager twin of the same function (a residual network and its plain forms compute the same "
    f"logits), and whether it reaches the goal of {GOAL}x (medians; last column: the ratio of "
    "the two's fastest repeats):",
    "",
    *best_table(rows),
    "",
  ]
  return parts
