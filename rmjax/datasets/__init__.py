"""Datasets that ship with rmjax, as tfds builders (importing this package imports nothing).

`fashion_mnist_small` is a 12,000-image subset of Fashion-MNIST stored as package data, so
training and tests run offline; `rmjax.data` prepares it on first use.

>>> from rmjax.datasets import fashion_mnist_small
>>> builder = fashion_mnist_small.prepare()  # seconds, once per data_dir
"""
