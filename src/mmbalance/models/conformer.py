"""The Conformer encoder (Gulati et al., 2020) of the paper's "Conformer" models (Appendix A.3).

The MCR authors refine sequences with a 5-layer Conformer trained from scratch: wav2vec2
hidden states (first 12 layers) on CREMA-D audio, per-frame EfficientNet-B2 face features
(1408-d) on CREMA-D video and, per the paper, HuBERT / ViViT outputs on AVE. Their blocks
(``models/VAVL_git/VAVL/conformer`` in kkontras/MCR, a copy of sooftware/conformer) are, per
layer::

    x = x + 1/2 FF(x)                     FF: LayerNorm, Linear(d, 4d), Swish, Dropout,
                                              Linear(4d, d), Dropout   (macaron half steps)
    x = x + Dropout(MHSA(LayerNorm(x)))   relative-position self-attention (Transformer-XL:
                                          content + position scores, learned biases u, v,
                                          sinusoidal encodings projected without bias)
    x = x + Conv(x)                       LayerNorm, pointwise conv d -> 2d, GLU, depthwise
                                          conv (kernel 31, no bias), BatchNorm, Swish,
                                          pointwise conv d -> d, Dropout
    x = x + 1/2 FF(x)
    x = LayerNorm(x)

with every dropout 0.1, 8 heads, width 512, Linear layers Xavier-initialized with zero bias.
Before the blocks a bias-free 1x1 convolution projects the input to 50 channels and a Linear
maps them to the width (with dropout 0.1); the output is averaged over time (their
``AdaptiveAvgPool1d(1)``) into the 512-d feature.

Where this module departs from their code, on purpose:

- **Time is the sequence axis.** Their encoders permute (B, T, D) to (T, B, D) before a
  batch-first Conformer, so attention, the positional encoding and the depthwise convolution
  run across the *samples of a batch* and each prediction depends on its batch-mates. Here
  they run over time, as in the Conformer paper.
- **Relative positions are relative.** Their attention projects absolute positions
  0..T-1 and applies Transformer-XL's causal "relative shift", which gives a distance-
  dependent score only below the diagonal; above it the scores come from the next query row.
  Here the score of query i and key j uses the sinusoidal encoding of the distance i - j
  (both signs, as bidirectional relative attention needs), so it depends on i - j only and
  not on the sequence length.
- **Scores are scaled by 1/sqrt(d_head)** (Transformer-XL, the Conformer paper); their code
  divides by sqrt(d_model).
- **Padding is masked.** Their loaders pad face sequences with zero rows and never pass the
  mask. Here padded steps are masked as attention keys, zeroed before the depthwise
  convolution, left out of the BatchNorm batch statistics and of the mean pooling.

What padding guarantees: a real step never reads a padded one, so in eval mode a row's
output does not depend on how far it is padded nor on the other rows (up to float
rounding); in training mode BatchNorm still mixes the rows of a batch (it is batch
normalization), but only through their real steps, so extra padding changes nothing.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .pretrained import PretrainedEncoder, pretrained_dir


def _heads(d_model: int) -> int:
    return next(h for h in (8, 4, 2, 1) if d_model % h == 0)


def _linear(d_in: int, d_out: int, bias: bool = True) -> nn.Linear:
    """A Linear layer initialized as the authors' blocks do: Xavier-uniform weight, zero bias."""
    layer = nn.Linear(d_in, d_out, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def sinusoid(positions: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(P,) positions -> (P, dim) encodings: ``sin(p w_k)`` at even and ``cos(p w_k)`` at odd
    columns, ``w_k = 10000^(-2k/dim)`` ("Attention Is All You Need"), computed in ``dtype``."""
    freqs = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=dtype) * (-math.log(10000.0) / dim))
    angles = positions.to(dtype)[:, None] * freqs[None, :]
    pe = torch.zeros(positions.shape[0], dim, device=positions.device, dtype=dtype)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, :dim // 2])
    return pe


class FeedForward(nn.Module):
    """LayerNorm, Linear(d, mult*d), Swish, Dropout, Linear(mult*d, d), Dropout: (B, T, d)."""

    def __init__(self, d_model: int, mult: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), _linear(d_model, mult * d_model), nn.SiLU(),
                                 nn.Dropout(dropout), _linear(mult * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with sinusoidal relative positions (Transformer-XL, Dai et
    al. 2019, as the Conformer uses it): the score of query i and key j is
    ``((q_i + u) . k_j + (q_i + v) . W_pos r_{i-j}) / sqrt(d_head)``, u and v learned per head.

    Args:
        d_model: width (divisible by ``heads``).
        heads: number of heads.
        dropout: dropout on the attention weights.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads, self.d_head = heads, d_model // heads
        self.query, self.key, self.value = (_linear(d_model, d_model) for _ in range(3))
        self.pos = _linear(d_model, d_model, bias=False)
        self.out = _linear(d_model, d_model)
        self.u_bias = nn.Parameter(nn.init.xavier_uniform_(torch.empty(heads, self.d_head)))
        self.v_bias = nn.Parameter(nn.init.xavier_uniform_(torch.empty(heads, self.d_head)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """(B, T, d) steps, (B, T) bool of real steps -> (B, T, d)."""
        b, t, d = x.shape
        split = (b, t, self.heads, self.d_head)
        q, k, v = self.query(x).view(split), self.key(x).view(split), self.value(x).view(split)
        distances = torch.arange(t - 1, -t, -1, device=x.device)  # i - j from t-1 down to -(t-1)
        exact = torch.float64 if x.dtype == torch.float64 else torch.float32  # never sin() in half precision
        r = self.pos(sinusoid(distances, d, exact).to(x.dtype)).view(2 * t - 1, self.heads, self.d_head)
        content = torch.einsum("bihd,bjhd->bhij", q + self.u_bias, k)
        by_distance = torch.einsum("bihd,rhd->bhir", q + self.v_bias, r)  # (B, H, T, 2T-1)
        steps = torch.arange(t, device=x.device)
        column = (t - 1) - steps[:, None] + steps[None, :]  # where distance i - j sits
        position = by_distance.gather(-1, column.expand(b, self.heads, t, t))
        scores = (content + position) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = self.dropout(scores.softmax(-1))
        return self.out(torch.einsum("bhij,bjhd->bihd", weights, v).reshape(b, t, d))


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over (B, C, T) whose training statistics (and running estimates) use only the
    real steps; without padding it is ``nn.BatchNorm1d`` itself."""

    def forward(self, x: Tensor, valid: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        if valid is None or not self.training or bool(valid.all()):
            return super().forward(x)
        w = valid[:, None, :].to(x.dtype)
        n = w.sum()
        mean = (x * w).sum((0, 2)) / n
        var = ((x - mean[None, :, None]) ** 2 * w).sum((0, 2)) / n
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():  # torch keeps the unbiased variance as its running estimate
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp(min=1))
        y = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return y * self.weight[None, :, None] + self.bias[None, :, None] if self.affine else y


class ConvModule(nn.Module):
    """LayerNorm, pointwise conv d -> 2d, GLU, depthwise conv (``kernel_size``, 'same' zero
    padding, no bias), BatchNorm, Swish, pointwise conv d -> d, Dropout: (B, T, d). Padded steps
    are zeroed before the depthwise conv, so they read like the conv's own zero padding."""

    def __init__(self, d_model: int, kernel_size: int = 31, dropout: float = 0.1) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        self.norm = nn.LayerNorm(d_model)
        self.expand = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model,
                                   bias=False)
        self.batch_norm = MaskedBatchNorm1d(d_model)
        self.project = nn.Conv1d(d_model, d_model, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        h = F.glu(self.expand(self.norm(x).transpose(1, 2)), dim=1)  # (B, d, T)
        h = self.depthwise(h * valid[:, None, :].to(h.dtype))
        h = self.project(F.silu(self.batch_norm(h, valid)))
        return self.dropout(h.transpose(1, 2))


class ConformerBlock(nn.Module):
    """One Conformer layer: 1/2 FF, MHSA, Conv, 1/2 FF (each a residual), final LayerNorm."""

    def __init__(self, d_model: int, heads: int, ff_mult: int = 4, kernel_size: int = 31,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, ff_mult, dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = RelPositionAttention(d_model, heads, dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConvModule(d_model, kernel_size, dropout)
        self.ff2 = FeedForward(d_model, ff_mult, dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """(B, T, d), (B, T) bool of real steps -> (B, T, d)."""
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn_dropout(self.attn(self.attn_norm(x), valid))
        x = x + self.conv(x, valid)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class ConformerEncoder(nn.Module):
    """(B, T, D) sequences -> (B, d_model) features: input projection, Conformer blocks, mean
    over the real steps (the authors average over time; they have no mask).

    Args:
        in_dim: D.
        d_model: width of the blocks and of the feature (the authors' 512).
        layers: number of blocks (5 in the paper's models).
        heads: attention heads; None: 8, or the largest of 4, 2, 1 dividing ``d_model``.
        ff_mult: feed-forward expansion (4).
        kernel_size: depthwise convolution kernel (31).
        dropout: every dropout of the encoder (0.1).
        bottleneck: width of the bias-free projection before the Linear to ``d_model`` (the
            authors' 50); None: one Linear from D.
        zero_rows_are_padding: without an explicit mask, all-zero input steps are padding (as
            the loaders pad); False: every step is real.

    Example:
        >>> enc = ConformerEncoder(1408, d_model=64, layers=2, bottleneck=50)
        >>> enc(torch.randn(4, 30, 1408)).shape  # torch.Size([4, 64])
    """

    def __init__(self, in_dim: int, d_model: int = 512, layers: int = 5, heads: Optional[int] = None,
                 ff_mult: int = 4, kernel_size: int = 31, dropout: float = 0.1, bottleneck: Optional[int] = 50,
                 zero_rows_are_padding: bool = True) -> None:
        super().__init__()
        heads = heads or _heads(d_model)
        first = [nn.Linear(in_dim, bottleneck, bias=False)] if bottleneck else []
        self.proj = nn.Sequential(*first, _linear(bottleneck or in_dim, d_model), nn.Dropout(dropout))
        self.blocks = nn.ModuleList(ConformerBlock(d_model, heads, ff_mult, kernel_size, dropout)
                                    for _ in range(layers))
        self.out_dim, self.zero_rows_are_padding = d_model, zero_rows_are_padding

    def real_steps(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """(B, T) bool of real steps: ``~padding_mask``, else the non-zero rows of ``x``; a row
        with no real step counts every step as real (its output is then defined)."""
        if padding_mask is not None:
            valid = ~padding_mask.to(device=x.device, dtype=torch.bool)
        elif self.zero_rows_are_padding:
            valid = x.detach().abs().sum(-1) > 0
        else:
            valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return valid | ~valid.any(1, keepdim=True)

    def sequence(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """(B, T, D) -> ((B, T, d_model) outputs, (B, T) bool of real steps)."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        valid = self.real_steps(x, padding_mask)
        h = self.proj(x)
        for block in self.blocks:
            h = block(h, valid)
        return h, valid

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """(B, T, D) (a (B, D) input is one step), optional (B, T) bool ``padding_mask`` (True
        at padded steps) -> (B, d_model), the mean over the real steps."""
        h, valid = self.sequence(x, padding_mask)
        w = valid.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1)


class BackboneConformer(nn.Module):
    """A pretrained backbone's output sequence refined by a Conformer: the paper's
    "Conformer" models (wav2vec2 -> Conformer on CREMA-D audio; HuBERT, ViViT -> Conformer on
    AVE). The backbone's steps are all real (its inputs have a fixed length)."""

    def __init__(self, backbone: PretrainedEncoder, conformer: ConformerEncoder) -> None:
        super().__init__()
        self.backbone, self.conformer = backbone, conformer
        self.out_dim = conformer.out_dim

    def forward(self, x: Tensor) -> Tensor:
        """The backbone's input (waveforms, clips) -> (B, d_model)."""
        h = self.backbone.sequence(x)
        return self.conformer(h, torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device))


def _conformer_for(in_dim: int, cfg: Any) -> ConformerEncoder:
    return ConformerEncoder(in_dim, d_model=cfg.feature_dim, layers=cfg.layers, dropout=cfg.dropout,
                            bottleneck=cfg.hidden or None)


def conformer(shape: Tuple[int, ...], cfg: Any) -> nn.Module:
    """Registry factory for (T, D) feature sequences (pre-extracted features, e.g. CREMA-D's
    face features): width ``model.feature_dim``, ``model.layers`` blocks, input bottleneck
    ``model.hidden``, dropout ``model.dropout``; all-zero steps are padding."""
    return _conformer_for(int(shape[-1]) if shape else 1, cfg)


def pretrained_conformer(shape: Tuple[int, ...], cfg: Any, modality: Optional[str] = None) -> nn.Module:
    """Registry factory: the backbone in ``model.pretrained`` for ``modality`` (as the
    ``pretrained`` encoder loads it), its hidden-state sequence fed to a Conformer sized as
    :func:`conformer` sizes it."""
    backbone = PretrainedEncoder(pretrained_dir(getattr(cfg, "pretrained", None), modality))
    if backbone.input_name == "input_values" and len(shape) != 1:
        raise ConfigError(f"encoder pretrained_conformer for {modality!r}: the backbone takes waveforms but the data "
                          f"gives samples of shape {tuple(shape)}; ask the loader for waveforms "
                          "(data.audio_input=waveform, where the dataset reads them)")
    return BackboneConformer(backbone, _conformer_for(backbone.out_dim, cfg))


pretrained_conformer.wants_modality = True  # build_encoder passes the modality's name
