"""Encoders by name, and the default encoder for a sample shape."""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import math

from torch import nn

from ..errors import ConfigError
from .encoders import MLPEncoder


def _mlp(shape: Tuple[int, ...], cfg: Any) -> nn.Module:
    return MLPEncoder(int(math.prod(shape)) if shape else 1, cfg.feature_dim, cfg.hidden, cfg.layers, cfg.dropout)


#: name -> factory(sample_shape, ModelConfig) returning a module with ``out_dim``.
ENCODERS: Dict[str, Callable[[Tuple[int, ...], Any], nn.Module]] = {"mlp": _mlp}


def default_encoder(shape: Tuple[int, ...]) -> str:
    """(D,) -> mlp; (T, D) -> transformer_seq; (C, H, W) -> cnn2d, when registered
    (otherwise the MLP on the flattened sample)."""
    by_rank = {1: "mlp", 2: "transformer_seq", 3: "cnn2d"}
    name = by_rank.get(len(shape), "mlp")
    return name if name in ENCODERS else "mlp"


def build_encoder(name: str, shape: Tuple[int, ...], cfg: Any) -> nn.Module:
    """Instantiates encoder ``name`` for samples of ``shape``."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; valid: {', '.join(ENCODERS)}")
    return ENCODERS[name](tuple(shape), cfg)
