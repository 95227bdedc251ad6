"""Encoders for feature sequences (B, T, D) and small images (B, C, H, W).

``TransformerSeqEncoder`` is the MOSI/MOSEI encoder of the paper (Appendix A.3: a 5-layer
Transformer, hidden size 40, as in MultiBench): a bias-free 1x1 convolution projects each
step to ``d_model``, a Transformer encoder (5 heads when ``d_model`` allows) runs over the
steps, and the output at the last real step is the feature. All-zero steps are treated as
padding (the MultiBench pickles pad sequences with zero rows at the front) and masked as
attention keys. ``SmallCNN`` is a 3-block CNN for users' images.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import Tensor, nn


def _heads(d_model: int) -> int:
    return next(h for h in (5, 8, 4, 2, 1) if d_model % h == 0)


class TransformerSeqEncoder(nn.Module):
    """(B, T, D) sequences -> (B, d_model).

    Args:
        in_dim: D.
        d_model: width of the Transformer (the feature size given to fusion).
        layers: number of encoder layers (5 for MOSI/MOSEI).
        ff_dim: width of each layer's feed-forward block (MultiBench keeps PyTorch's 2048).
        dropout: dropout inside the layers (MultiBench keeps PyTorch's 0.1).
        pool: ``last`` (output at the last non-padding step, MultiBench) or ``mean`` (mean
            over the non-padding steps).
    """

    def __init__(self, in_dim: int, d_model: int = 40, layers: int = 5, ff_dim: int = 2048, dropout: float = 0.1,
                 pool: str = "last") -> None:
        super().__init__()
        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
        self.proj = nn.Conv1d(in_dim, d_model, kernel_size=1, bias=False)
        layer = nn.TransformerEncoderLayer(d_model, _heads(d_model), dim_feedforward=ff_dim, dropout=dropout,
                                           batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.out_dim, self.pool = d_model, pool

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, d_model); a (B, D) input is one step."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        valid = x.abs().sum(-1) > 0  # (B, T); all-zero rows are padding
        valid = valid | ~valid.any(1, keepdim=True)  # an all-padding sequence attends to every step
        h = self.transformer(self.proj(x.transpose(1, 2)).transpose(1, 2), src_key_padding_mask=~valid)
        if self.pool == "mean":
            w = valid.unsqueeze(-1).to(h.dtype)
            return (h * w).sum(1) / w.sum(1)
        last = (valid.long().cumsum(1)).argmax(1)  # index of the last valid step
        return h[torch.arange(h.shape[0], device=h.device), last]


class SmallCNN(nn.Module):
    """Three conv(3x3, stride 2) + BatchNorm + ReLU blocks (32, 64, 128 channels), global
    average pooling and a linear projection: (B, C, H, W) -> (B, out_dim)."""

    def __init__(self, in_channels: int, out_dim: int = 100) -> None:
        super().__init__()
        blocks, width = [], in_channels
        for c in (32, 64, 128):
            blocks += [nn.Conv2d(width, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            width = c
        self.net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, out_dim))
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_dim); a (B, H, W) input is one channel."""
        return self.net(x.unsqueeze(1) if x.dim() == 3 else x)


def transformer_seq(shape: Tuple[int, ...], cfg: Any) -> nn.Module:
    """Registry factory for (T, D) samples: d_model = ``model.feature_dim``, depth =
    ``model.layers``, feed-forward width = ``model.hidden``, dropout = ``model.dropout``."""
    return TransformerSeqEncoder(int(shape[-1]) if shape else 1, cfg.feature_dim, cfg.layers, cfg.hidden, cfg.dropout)


def cnn2d(shape: Tuple[int, ...], cfg: Any) -> nn.Module:
    """Registry factory for (C, H, W) samples: output size ``model.feature_dim``."""
    return SmallCNN(int(shape[0]) if len(shape) == 3 else 1, cfg.feature_dim)
