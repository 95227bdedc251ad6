"""ResNet-18 encoders for spectrograms and video frames, written here (no torchvision).

He et al., "Deep Residual Learning for Image Recognition" (2016); the paper's Appendix A.3:
randomly initialized ResNet-18 for audio and video on CREMA-D, AVE and UCF, with adaptive
pooling so any input size works. The module names and shapes follow torchvision's
``resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer2.0.downsample.0``), so its
state dict (without ``fc``) loads into :class:`ResNet18` with ``strict=False``.

Parameter count (3-channel input): 11,176,512 without the classifier; with torchvision's
1000-class ``fc`` (512*1000 + 1000 = 513,000) it is torchvision's 11,689,512. The audio
encoder's 1-channel stem has 64*1*7*7 = 3,136 instead of 9,408 stem weights: 11,170,240.
"""

from __future__ import annotations

from typing import Any, Tuple

from torch import Tensor, nn


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        """(B, c_in, H, W) -> (B, c_out, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """The ResNet-18 trunk: 7x7/2 stem, max pool, four stages of two basic blocks
    (64, 128, 256, 512 channels), global average pooling; no classifier.

    Args:
        in_channels: input channels (3 for RGB frames, 1 for spectrograms).
        width: stem width w; the stages have w, 2w, 4w, 8w channels and the output 8w.
            64 is ResNet-18; smaller widths only serve quick tests.
    """

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        w = width
        widths = [(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2)]
        self.out_dim = 8 * w
        for i, (c_in, c_out, stride) in enumerate(widths, start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)))
        #: channels after each stage, for modules that act between stages (MMTM)
        self.stage_channels = {"stem": w, **{f"layer{i}": c for i, (_, c, _) in enumerate(widths, start=1)}}
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialization: Kaiming normal (fan_out) convolutions, unit BN scale.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    #: the stages :meth:`stage` runs, in order (intermediate fusion: models/multimodal.py)
    stages = ("stem", "layer1", "layer2", "layer3", "layer4")

    def _stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def feature_maps(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 8w, ceil(H/32), ceil(W/32)) before pooling (8w = 512)."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self._stem(x)))))

    def stage_input(self, x: Tensor) -> Tensor:
        """The raw input in the layout :meth:`stage` takes: (B, C, H, W) or (B, C, T, H, W)."""
        return x

    def stage(self, name: str, h: Tensor) -> Tensor:
        """Runs one stage of :attr:`stages` on (B, C, ...) maps, the sample axis first and the
        channel axis second; (B, C, T, H, W) frames go through the 2-D net frame by frame and
        come back as (B, C', T, H', W')."""
        module = self._stem if name == "stem" else getattr(self, name)
        if h.dim() == 5:
            b, c, t = h.shape[:3]
            out = module(h.transpose(1, 2).reshape(b * t, c, *h.shape[3:]))
            return out.reshape(b, t, *out.shape[1:]).transpose(1, 2)
        return module(h)

    def readout(self, h: Tensor) -> Tensor:
        """The last stage's (B, 8w, ...) maps -> (B, 8w) features, averaged over every other axis."""
        return h.mean(dim=tuple(range(2, h.dim())))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 512), averaged over space."""
        return self.feature_maps(x).mean(dim=(-2, -1))


class ResNet18Audio(ResNet18):
    """ResNet-18 on a 1-channel spectrogram: (B, F, T) or (B, 1, F, T) -> (B, 512)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__(in_channels=1, width=width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, F, T) or (B, 1, F, T) -> (B, 512)."""
        return super().forward(self.stage_input(x))

    def stage_input(self, x: Tensor) -> Tensor:
        """(B, F, T) or (B, 1, F, T) -> (B, 1, F, T)."""
        return x.unsqueeze(1) if x.dim() == 3 else x


class ResNet18Video(ResNet18):
    """A 2-D ResNet-18 applied to each frame, averaged over time and space (the authors'
    ``adaptive_avg_pool3d`` over the stacked frame maps): (B, 3, T, H, W) -> (B, 512)."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__(in_channels=in_channels, width=width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, 512)."""
        if x.dim() == 4:  # a single image per sample
            return super().forward(x)
        b, c, t, h, w = x.shape
        maps = self.feature_maps(x.transpose(1, 2).reshape(b * t, c, h, w))
        return maps.reshape(b, t, *maps.shape[1:]).mean(dim=(1, 3, 4))


def resnet18_audio(shape: Tuple[int, ...], cfg: Any) -> nn.Module:
    """Registry factory: spectrogram samples of shape (F, T) or (1, F, T); ``model.base_width``."""
    return ResNet18Audio(width=getattr(cfg, "base_width", 64))


def resnet18_video(shape: Tuple[int, ...], cfg: Any) -> nn.Module:
    """Registry factory: frame samples of shape (C, T, H, W) or (C, H, W); ``model.base_width``."""
    return ResNet18Video(in_channels=int(shape[0]) if shape else 3, width=getattr(cfg, "base_width", 64))
