"""Datasets and how they reach the model: ``load(cfg, img_size)`` gives the ``Dataset`` a spec's
``data`` section names, and a ``Loader`` feeds its batches from device memory or streams them
from the decoded cache (``residency`` says which).

- ``folders``: what real data holds on disk and what is taken (torch-free); the data check
- ``cache``: the decoded uint8 cache: keyed, built with every core, checked, pruned (torch-free)
- ``sources``: shapes, CIFAR, image folders; ``Dataset``, ``Split`` and ``load``
- ``loader``: the ``Loader`` (order, residency, crop and flip on the device)
- ``augment``: timm's recipes (RandAugment, random erasing, Mixup/CutMix)

May import: the base (errors, console, files, schema) and the config layer (variant, config,
stats). Importing the package loads no torch (its names load on first use), so the spec layer
checks data through ``folders`` and ``bench cache`` lists caches without it.
"""
import importlib

__all__ = ["Dataset", "Loader", "Recipe", "Split", "check_available", "load", "residency"]

_LAZY = {"Dataset": "sources", "Split": "sources", "load": "sources", "Loader": "loader", "residency": "loader",
         "Recipe": "augment", "check_available": "folders"}


def __getattr__(name: str):
    if name in _LAZY:  # on first use: `import bench.data.cache` stays free of torch
        return getattr(importlib.import_module(f"bench.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bench.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
