"""Train a model: `python train.py --config configs/demo.py`.

The command lives in rmjax/commands/train.py, installed as the `rmjax-train` console script;
this file keeps `python train.py ...` working in a checkout.
"""

from rmjax.commands.train import main

if __name__ == "__main__":
  main()
