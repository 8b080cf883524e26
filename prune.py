"""Prune a plain network by network slimming: `python prune.py PLAIN PRUNED --threshold T`.

The command lives in rmjax/commands/prune.py, installed as the `rmjax-prune` console script;
this file keeps `python prune.py ...` working in a checkout.
"""

from rmjax.commands.prune import main

if __name__ == "__main__":
  main()
