"""mmbalance: multimodal models that learn from every modality.

The reference implementation of the Multimodal Competition Regularizer (MCR, Kontras et
al.) and of the balancing methods it is compared against.
"""

from . import losses
from .errors import ConfigError, DataError, MMBalanceError, NonFiniteLossError
from .losses import CEB, MIPD, MCRLoss, SupervisedContrastive
from .models import MLPEncoder, MultimodalModel
from .types import Batch, LossTerms, ModelOutput
from .version import __version__

__all__ = ["losses", "MCRLoss", "MIPD", "SupervisedContrastive", "CEB", "MLPEncoder", "MultimodalModel", "Batch", "LossTerms", "ModelOutput",
           "ConfigError", "DataError", "MMBalanceError", "NonFiniteLossError", "__version__"]
