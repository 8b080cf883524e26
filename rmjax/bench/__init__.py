"""Everything that measures speed (`python bench.py`).

- `measure`: the protocol (the paper's 50 warm-up + 50 timed batches), one row per network and
  batch size (imgs/s, params, MACs, XLA's FLOPs against an analytical count, memory, compile
  time, logit difference from the source network).
- `suites`: the networks, grouped residual beside plain, and how a plain network runs.
- `report`: Markdown tables, JSON, the plot, and the sections of docs/benchmarks.md.
- `torch_twins`: PyTorch rebuilds of rmjax networks with the same weights (the peer column);
  `torch_timing`: their timing; `training`: the training-step benchmark in both frameworks.
- `onnx_timing`: each plain network's ONNX artefact (checked against JAX first) in ONNX Runtime,
  and an int8 form where `rmjax.deploy.quantize` exists; `serving`: the engines side by side and
  the best rmjax artefact against PyTorch eager (the report's serving tables).

Nothing here is imported by `import rmjax`; torch is imported only when a twin is built.
"""
