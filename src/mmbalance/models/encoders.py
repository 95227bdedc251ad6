"""Encoders for vector inputs, and :class:`Select` for encoders with several outputs.

Other encoders (ResNet-18, sequence transformer) come with the real datasets. Any
``nn.Module`` works as an encoder: one with an ``out_dim`` attribute gives its feature size
at once, any other tells it on its first batch (see :class:`~mmbalance.MultimodalModel`)."""

from __future__ import annotations

from torch import Tensor, nn


class MLPEncoder(nn.Module):
    """A plain MLP for (B, D) vectors: ``layers`` hidden Linear+ReLU blocks, then a projection.

    Mirrors the encoder used for the FactorCL-style synthetic data the paper builds on
    (100 -> 100 hidden, 2 layers, projection 100).

    Args:
        in_dim: input size D.
        out_dim: feature size D_m given to the fusion network.
        hidden: width of the hidden layers.
        layers: number of hidden Linear+ReLU blocks (0 gives a single linear map).
        dropout: dropout after each hidden block.
    """

    def __init__(self, in_dim: int, out_dim: int = 100, hidden: int = 100, layers: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width = hidden
        blocks.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*blocks)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, out_dim); extra axes are flattened into D."""
        return self.net(x.flatten(1))


class Select(nn.Module):
    """Picks the feature out of an encoder that returns several outputs.

    ``Select(module, 0)`` takes ``module(x)[0]`` (a tuple or list: ``nn.LSTM``,
    ``nn.MultiheadAttention``); ``Select(module, "pooler_output")`` takes ``out[key]`` of a
    dict, or the attribute of that name (Hugging Face model outputs). The wrapped module's
    parameters stay the encoder's parameters (``model.modality_parameters(m)``).

    Args:
        module: the encoder.
        key: index or key of the output that is the (B, D) or (B, T, D) feature.
    """

    def __init__(self, module: nn.Module, key) -> None:
        super().__init__()
        self.module, self.key = module, key
        if hasattr(module, "out_dim"):
            self.out_dim = module.out_dim

    def forward(self, *args, **kwargs) -> Tensor:
        out = self.module(*args, **kwargs)
        if isinstance(self.key, str) and not isinstance(out, dict) and hasattr(out, self.key):
            return getattr(out, self.key)
        return out[self.key]
