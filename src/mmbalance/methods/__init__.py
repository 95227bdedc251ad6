"""Balancing methods, one file each, and their registry."""

from __future__ import annotations

from typing import Dict, Type

from ..errors import ConfigError
from .base import Method
from .joint import Joint
from .mcr import MCR
from .multiloss import MultiLoss
from .unimodal import Unimodal

REGISTRY: Dict[str, Type[Method]] = {cls.name: cls for cls in (Unimodal, Joint, MultiLoss, MCR)}


def get_method(name: str) -> Type[Method]:
    """The method class registered under ``name``."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["Method", "REGISTRY", "get_method", "Joint", "MultiLoss", "Unimodal", "MCR"]
