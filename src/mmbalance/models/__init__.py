"""Models: encoders, fusion networks and the multimodal model."""

from .encoders import MLPEncoder
from .fusion import FUSIONS, ConcatLinear, ConcatMLP, FiLMFusion, GatedFusion, SumFusion
from .multimodal import MultimodalModel
from .registry import ENCODERS, build_encoder, default_encoder

__all__ = ["MLPEncoder", "FUSIONS", "ConcatLinear", "ConcatMLP", "FiLMFusion", "GatedFusion",
           "SumFusion", "MultimodalModel", "ENCODERS",
           "build_encoder", "default_encoder"]
