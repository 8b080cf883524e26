"""`python -m rmjax.demo`: remove the residual connections of a ResNet and check the result.

Builds a ResNet (CIFAR stem by default) with random weights and random BN statistics, converts it
with `rm_convert` in both forms, and prints the plain network, parameter counts, the number of
residual additions before/after and the largest logit difference. Needs no data or downloads.
"""

from __future__ import annotations

import argparse
import time

import jax

from rmjax import models, transforms
from rmjax.cost import count_params, count_residual_adds
from rmjax.randomize import random_variables
from rmjax.verify import max_abs_difference


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18", choices=models.names())
  parser.add_argument("--stem", default="cifar", choices=models.layers.STEMS)
  parser.add_argument("--num_classes", type=int, default=10)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=8)
  args = parser.parse_args(argv)

  model = models.create(args.model, num_classes=args.num_classes, stem=args.stem)
  shape = (args.batch_size, args.image_size, args.image_size, 3)
  x = jax.random.uniform(jax.random.key(0), shape)
  variables = random_variables(model, x, seed=0)
  print(f"{args.model} ({args.stem} stem): {count_params(variables['params']):,} parameters")

  for keep_bn in (True, False):
    start = time.perf_counter()
    plain, plain_vars = jax.block_until_ready(
      transforms.rm_convert_jit(model, variables, keep_bn=keep_bn)
    )
    seconds = time.perf_counter() - start
    form = "fine-tuning form (BN kept)" if keep_bn else "deploy form (BN folded)"
    diff = max_abs_difference(model, variables, plain, plain_vars, x)
    print(
      f"{form}: {len(plain.layers)} layers, {count_params(plain_vars['params']):,} parameters, "
      f"converted in {seconds:.2f}s (incl. compile); max |logit difference| = {diff:.2e}"
    )
  adds_before = count_residual_adds(lambda x: model.apply(variables, x, train=False), x)
  # The dense form: structured execution adds identity shortcuts as adds, by design.
  adds_after = count_residual_adds(lambda x: plain.apply(plain_vars, x, structured=False), x)
  print(f"residual additions: {adds_before} before, {adds_after} after\n")
  print(plain)


if __name__ == "__main__":
  main()
