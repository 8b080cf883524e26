"""Prune through RM vs prune a ResNet (Fig. 4, Fig. 7): `python slim.py --config CONFIG`.

The command lives in rmjax/commands/slim.py, installed as the `rmjax-slim` console script;
this file keeps `python slim.py ...` working in a checkout.
"""

from rmjax.commands.slim import main

if __name__ == "__main__":
  main()
