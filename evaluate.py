"""Top-1/top-5 of training checkpoints and plain networks on the same test split.

The command lives in rmjax/commands/evaluate.py, installed as the `rmjax-evaluate` console script;
this file keeps `python evaluate.py ...` working in a checkout.
"""

from rmjax.commands.evaluate import main

if __name__ == "__main__":
  main()
