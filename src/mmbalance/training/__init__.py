"""The one training loop (Lightning), configuration builders and run outputs.

The names below load on first use (PEP 562), so that importing a light submodule (such as
``training.progress``) does not import Lightning."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"atomic_write_text": "..engine", "build_data": ".build", "build_method": ".build",
          "build_model": ".build", "loaders": ".build", "BalanceModule": ".module", "train": ".run"}

__all__ = ["BalanceModule", "build_data", "build_method", "build_model", "loaders", "train", "atomic_write_text"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
