"""Stages: unimodal runs that a ``train`` call makes before the method itself.

A method whose ``method.init`` is ``unimodal`` (and ``ensemble``, ``unipre_frozen`` and
``unipre_finetuned``, which always start so) lists one :class:`Stage` per modality. The
training loop runs each as an ordinary run in ``OUT/stages/<name>/`` (its own checkpoints
and ``metrics.json``; cached by configuration when ``trainer.stage_cache`` is set), hands
their best states to :meth:`Method.load_stages`, and then trains the method (or only
evaluates it when ``trains_final`` is false). With ``--resume``, finished stages are
skipped and an interrupted stage continues from its ``last.ckpt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence


@dataclass(frozen=True)
class Stage:
    """One stage: train registered method ``method`` with ``hparams`` into ``stages/<name>``."""

    name: str
    method: str
    hparams: Dict[str, Any] = field(default_factory=dict)
    modality: str = ""


def unimodal_stages(modalities: Sequence[str]) -> List[Stage]:
    """One ``unimodal`` stage per modality."""
    return [Stage(f"unimodal_{m}", "unimodal", {"modality": m}, m) for m in modalities]
