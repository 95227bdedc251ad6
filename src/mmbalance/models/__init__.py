"""Models: encoders, fusion networks and the multimodal model."""

from .encoders import MLPEncoder, Select
from .fusion import FUSIONS, ConcatLinear, ConcatMLP, FiLMFusion, GatedFusion, SumFusion
from .multimodal import MultimodalModel
from .registry import ENCODERS, build_encoder, default_encoder

__all__ = ["MLPEncoder", "Select", "FUSIONS", "ConcatLinear", "ConcatMLP", "FiLMFusion", "GatedFusion",
           "SumFusion", "MultimodalModel", "ENCODERS",
           "build_encoder", "default_encoder"]
