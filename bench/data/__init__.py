"""Datasets and how they reach the model: the built-in ``shapes`` and real data (CIFAR, image
folders) decoded once into a cache on disk, the loader that feeds batches from device memory or
streams them from the cache, and timm's augmentation recipes.

May import: the base (errors, console, files, schema) and the config layer (variant, config,
stats). Importing the package loads no torch: the cache and folder listing are torch-free, and
the spec layer checks data through them.
"""
