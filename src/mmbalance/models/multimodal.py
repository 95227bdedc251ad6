"""The multimodal model: one encoder per modality, a fusion network, one head per modality."""

from __future__ import annotations

from typing import Dict, Iterator, Mapping, Optional, Union

from torch import Tensor, nn

from ..errors import ConfigError
from ..types import ModelOutput
from .fusion import FUSIONS


class MultimodalModel(nn.Module):
    """``f(X) = f_c(f_1(X_1), ..., f_M(X_M))`` with unimodal heads ``f_cm(f_m(X_m))``
    (paper Eq. 1-2).

    Args:
        encoders: modality name -> encoder mapping (B, ...) to (B, D_m); M >= 2. The order
            of this mapping is the model's modality order.
        num_classes: C; ``1`` makes the model a regressor.
        fusion: a name in ``FUSIONS`` or a module called as ``fusion(features) -> (N, C)``.
        feature_dims: modality -> D_m, needed only for encoders without ``out_dim``.
        fusion_hidden: width of the non-linear fusions.

    Example:
        >>> model = MultimodalModel({"a": MLPEncoder(10, 8), "v": MLPEncoder(12, 8)}, 5)
        >>> out = model({"a": xa, "v": xv})  # out.logits (B,5), out.features["a"] (B,8)
    """

    def __init__(self, encoders: Mapping[str, nn.Module], num_classes: int,
                 fusion: Union[str, nn.Module] = "concat_linear",
                 feature_dims: Optional[Mapping[str, int]] = None, fusion_hidden: int = 128) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ConfigError(f"MultimodalModel needs at least 2 modalities, got {list(encoders)}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.modalities = list(encoders)
        self.num_classes = num_classes
        self.feature_dims = self._feature_dims(feature_dims or {})
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in self.feature_dims.items()})
        if isinstance(fusion, str):
            if fusion not in FUSIONS:
                raise ConfigError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
            kwargs = {} if fusion == "concat_linear" else {"hidden": fusion_hidden}
            fusion = FUSIONS[fusion](self.feature_dims, num_classes, **kwargs)
        self.fusion = fusion

    def _feature_dims(self, given: Mapping[str, int]) -> Dict[str, int]:
        dims = {}
        for m, enc in self.encoders.items():
            dim = given.get(m, getattr(enc, "out_dim", None))
            if dim is None:
                raise ConfigError(f"encoder {m!r} has no out_dim attribute; pass feature_dims={{{m!r}: D}}")
            dims[m] = int(dim)
        return dims

    @property
    def task(self) -> str:
        """``"regression"`` when ``num_classes == 1``, else ``"classification"``."""
        return "regression" if self.num_classes == 1 else "classification"

    def encode(self, inputs: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Modality -> (B, D_m) features."""
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise KeyError(f"inputs lack modalities {missing}; the model expects {self.modalities}")
        return {m: self.encoders[m](inputs[m]) for m in self.modalities}

    def fuse(self, features: Mapping[str, Tensor]) -> Tensor:
        """The fusion network alone: modality -> (N, D_m) features to (N, C) logits."""
        return self.fusion(features)

    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        features = self.encode(inputs)
        unimodal = {m: self.heads[m](features[m]) for m in self.modalities}
        return ModelOutput(logits=self.fuse(features), unimodal_logits=unimodal, features=features)

    def modality_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """Parameters of ``modality``'s encoder (by structure, not by name matching)."""
        return self.encoders[modality].parameters()

    def head_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """Parameters of ``modality``'s unimodal head."""
        return self.heads[modality].parameters()

    def fusion_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the fusion network."""
        return self.fusion.parameters()
