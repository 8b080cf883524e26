"""Inference speed, params, FLOPs and memory of residual networks beside their plain forms.

The command lives in rmjax/commands/bench.py, installed as the `rmjax-bench` console script;
this file keeps `python bench.py ...` working in a checkout.
"""

from rmjax.commands.bench import main

if __name__ == "__main__":
  main()
