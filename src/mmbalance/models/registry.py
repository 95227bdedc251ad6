"""Encoders by name, and the default encoder for a sample shape."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import math

from torch import nn

from ..errors import ConfigError
from .conformer import conformer, pretrained_conformer
from .encoders import MLPEncoder
from .pretrained import pretrained
from .resnet import resnet18_audio, resnet18_video
from .sequence import cnn2d, transformer_seq
from .swin import swin3d


def _mlp(shape: Tuple[int, ...], cfg: Any) -> nn.Module:
    return MLPEncoder(int(math.prod(shape)) if shape else 1, cfg.feature_dim, cfg.hidden, cfg.layers, cfg.dropout)


#: name -> factory(sample_shape, ModelConfig) returning a module with ``out_dim``.
ENCODERS: Dict[str, Callable[[Tuple[int, ...], Any], nn.Module]] = {
    "mlp": _mlp, "resnet18_audio": resnet18_audio, "resnet18_video": resnet18_video,
    "transformer_seq": transformer_seq, "cnn2d": cnn2d, "pretrained": pretrained,
    "swin3d": swin3d}
ENCODERS.update(conformer=conformer, pretrained_conformer=pretrained_conformer)  # models/conformer.py


def default_encoder(shape: Tuple[int, ...]) -> str:
    """(D,) -> mlp; (T, D) -> transformer_seq; (C, H, W) -> cnn2d, when registered
    (otherwise the MLP on the flattened sample)."""
    by_rank = {1: "mlp", 2: "transformer_seq", 3: "cnn2d"}
    name = by_rank.get(len(shape), "mlp")
    return name if name in ENCODERS else "mlp"


def build_encoder(name: str, shape: Tuple[int, ...], cfg: Any, modality: Optional[str] = None) -> nn.Module:
    """Instantiates encoder ``name`` for samples of ``shape`` (factories marked
    ``wants_modality`` also get the modality's name)."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; valid: {', '.join(ENCODERS)}")
    factory = ENCODERS[name]
    if getattr(factory, "wants_modality", False):
        return factory(tuple(shape), cfg, modality=modality)
    return factory(tuple(shape), cfg)


def encoder_for(modality: str, spec: Optional[str], modalities: Iterable[str] = ()) -> Optional[str]:
    """The encoder that ``model.encoder`` names for ``modality``, or None.

    ``spec`` is one name for every modality (``"mlp"``) or per-modality choices
    (``"audio:resnet18_audio,video:cnn2d"``; modalities not listed keep their default).
    """
    if not spec or ":" not in spec:
        return spec or None
    choices = {}
    for part in spec.split(","):
        name, sep, encoder = (s.strip() for s in part.partition(":"))
        if not sep or not name or not encoder:
            raise ConfigError(f"model.encoder {spec!r}: expected NAME or MODALITY:NAME,MODALITY:NAME")
        choices[name] = encoder
    unknown = sorted(set(choices) - set(modalities)) if modalities else []
    if unknown:
        raise ConfigError(f"model.encoder names modality {unknown[0]!r}; valid: {', '.join(modalities)}")
    return choices.get(modality)
