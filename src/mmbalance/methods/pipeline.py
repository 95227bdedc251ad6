"""Multi-stage methods: unimodal stages first, then a final multimodal stage.

The training loop runs each :class:`Stage` as an ordinary run in ``OUT/stages/<name>/``
(its own checkpoints and ``metrics.json``), then builds the pipeline method, hands it the
stages' best checkpoints through :meth:`PipelineMethod.load_stages`, and trains it (or only
evaluates it when ``trains_final`` is false). With ``--resume``, finished stages are skipped
and an interrupted stage continues from its ``last.ckpt``. Reading checkpoints is the
engine's job (``RunDir``); here a stage arrives as its method's ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Sequence

from torch import Tensor

from .base import Method


@dataclass(frozen=True)
class Stage:
    """One stage: train registered method ``method`` with ``hparams`` into ``stages/<name>``."""

    name: str
    method: str
    hparams: Dict[str, Any] = field(default_factory=dict)
    modality: str = ""


class PipelineMethod(Method):
    """Base of methods built from unimodally trained encoders (one stage per modality)."""

    is_pipeline: ClassVar[bool] = True
    trains_final: ClassVar[bool] = True

    @classmethod
    def stages(cls, modalities: Sequence[str]) -> List[Stage]:
        """One ``unimodal`` stage per modality."""
        return [Stage(f"unimodal_{m}", "unimodal", {"modality": m}, m) for m in modalities]

    def load_stages(self, states: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Copies each stage's trained encoder and unimodal head into this method's model.

        Args:
            states: stage name -> the stage method's ``state_dict`` (from its best
                checkpoint, ``RunDir.method_state``).
        """
        stages = {s.name: s for s in self.stages(self.model.modalities)}
        for name, state in states.items():
            m = stages[name].modality
            for part, module in (("encoders", self.model.encoders[m]), ("heads", self.model.heads[m])):
                prefix = f"model.{part}.{m}."
                module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
