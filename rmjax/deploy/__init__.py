"""Plain networks as artefacts that run without rmjax, each checked against JAX on reload.

- `jax_formats`: a StableHLO file (`jax.export`) and a TensorFlow SavedModel (`jax2tf`).
"""
