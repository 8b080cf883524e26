"""Convert a training checkpoint into a plain network: `python convert.py CKPT PLAIN`.

The command lives in rmjax/commands/convert.py, installed as the `rmjax-convert` console script;
this file keeps `python convert.py ...` working in a checkout.
"""

from rmjax.commands.convert import main

if __name__ == "__main__":
  main()
