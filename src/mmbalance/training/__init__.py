"""The one training loop (Lightning), configuration builders and run outputs."""

from ..engine import atomic_write_text
from .build import build_data, build_method, build_model, loaders
from .module import BalanceModule
from .run import train

__all__ = ["BalanceModule", "build_data", "build_method", "build_model", "loaders", "train", "atomic_write_text"]
