"""Balancing methods, one file each, and their registry (filled by ``@register``)."""

from __future__ import annotations

from typing import Type

from ..errors import ConfigError, did_you_mean
from .base import REGISTRY, Method, register

# Importing a method's module registers it; this order is the order of `mmbalance methods`.
from .unimodal import Unimodal  # noqa: E402,I001
from .ensemble import Ensemble  # noqa: E402
from .joint import Joint  # noqa: E402
from .multiloss import MultiLoss  # noqa: E402
from .mmcosine import MMCosine  # noqa: E402
from .mslr import MSLR  # noqa: E402
from .pmr import PMR  # noqa: E402
from .ogm import OGM, OGMGE  # noqa: E402
from .agm import AGM  # noqa: E402
from .mlb import MLB  # noqa: E402
from .unipre import UniPreFinetuned, UniPreFrozen  # noqa: E402
from .mcr import MCR  # noqa: E402
from .mbsd import MBSD  # noqa: E402
from .umt import UMT  # noqa: E402
from .ume import UME  # noqa: E402
from .opm import OPM  # noqa: E402
from .cml import CML  # noqa: E402
from .mmpareto import MMPareto  # noqa: E402
from .gblending import GBlending  # noqa: E402
from .dnr import DnR  # noqa: E402
from .lfm import LFM  # noqa: E402
from .mla import MLA  # noqa: E402
from .reconboost import ReconBoost  # noqa: E402
from .valuation import Valuation  # noqa: E402
from .amco import AMCo  # noqa: E402
from .greedy import Greedy  # noqa: E402


def get_method(name: str) -> Type[Method]:
    """The method class registered under ``name``."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; {did_you_mean(name, REGISTRY)}valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["Method", "REGISTRY", "get_method", "register", "Unimodal", "Ensemble", "Joint", "MultiLoss",
           "MMCosine", "MSLR", "PMR", "OGM", "OGMGE", "AGM", "MLB", "UniPreFrozen", "UniPreFinetuned", "MCR"]
