"""leanformer: train Transformers in less memory and ship them in fewer bits.

The stable API is listed in ``__all__``. Importing this package is cheap and has no side effects:
the names below are loaded on first use (PEP 562), so ``import leanformer`` never imports
transformers, and never touches CUDA.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "LeanConfig": "leanformer.patch.config",
    "PatchReport": "leanformer.patch.api",
    "patch_": "leanformer.patch.api",
    "unpatch_": "leanformer.patch.api",
    "measure_step": "leanformer.profile",
    "StepMemoryReport": "leanformer.profile",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'leanformer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
