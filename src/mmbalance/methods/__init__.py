"""Balancing methods, one file each, and their registry."""

from __future__ import annotations

from typing import Dict, Type

from ..errors import ConfigError
from .agm import AGM
from .base import Method
from .ensemble import Ensemble
from .joint import Joint
from .mcr import MCR
from .mlb import MLB
from .mmcosine import MMCosine
from .mslr import MSLR
from .multiloss import MultiLoss
from .ogm import OGM, OGMGE
from .pmr import PMR
from .unimodal import Unimodal
from .unipre import UniPreFinetuned, UniPreFrozen

REGISTRY: Dict[str, Type[Method]] = {cls.name: cls for cls in (
    Unimodal, Ensemble, Joint, MultiLoss, MMCosine, MSLR, PMR, OGM, OGMGE, AGM, MLB,
    UniPreFrozen, UniPreFinetuned, MCR)}


def get_method(name: str) -> Type[Method]:
    """The method class registered under ``name``."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["Method", "REGISTRY", "get_method", "Joint", "MultiLoss", "Unimodal", "MCR", "MMCosine", "MSLR", "PMR",
           "OGM", "OGMGE", "AGM", "MLB"]
