"""Video frames for the real datasets: reading, the paper's crops and ImageNet normalization.

Paper, Appendix A.2 and the authors' loaders: frames at 1 fps, the first T of the SORTED
frame files, ``RandomResizedCrop(224)`` + horizontal flip for training, ImageNet mean/std.
For evaluation the authors resize to 224x224 (squashing the aspect ratio); we resize the
short side and take the centre crop (no distortion). The same crop and flip are applied
to every frame of a clip, so that the frames stay aligned in space. Written with torch and
Pillow only (no torchvision).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_frames(folder: str | Path) -> List[Path]:
    """The frame images in ``folder``, sorted by file name (the authors' order).

    Raises:
        DataError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"frame folder {folder} does not exist (expected a folder of .jpg frames)")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def _pil_to_tensor(image) -> Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_image(path: str | Path) -> Tensor:
    """Reads an image file as RGB.

    Returns:
        (3, H, W) float32 in [0, 1].

    Raises:
        DataError: the file is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            return _pil_to_tensor(image)
    except FileNotFoundError:
        raise DataError(f"frame {path} does not exist (expected a JPEG image)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"frame {path} is not a readable image ({exc})") from None


def decode_image(data: bytes, source: str) -> Tensor:
    """Decodes encoded image bytes (the Something-Something HDF5 frames).

    Returns:
        (3, H, W) float32 in [0, 1].
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            return _pil_to_tensor(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{source} is not a readable encoded image ({exc})") from None


def array_to_image(frame: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 (or float in [0, 255]) -> (3, H, W) float32 in [0, 1].

    The UCF authors normalize the raw 0-255 values with ImageNet statistics (a bug: their
    inputs are 255 times too large); we scale to [0, 1] first.
    """
    return torch.from_numpy(np.asarray(frame, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def random_crop_box(height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """``RandomResizedCrop``'s box: (top, left, h, w), drawn with the torch RNG.

    Ten tries at an area fraction in ``scale`` and an aspect ratio log-uniform in ``ratio``;
    then the largest centred box whose ratio lies in ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(1).uniform_(log_lo, log_hi)))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)))
            left = int(torch.randint(0, width - w + 1, (1,)))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _resize(image: Tensor, size: Tuple[int, int]) -> Tensor:
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def center_crop(image: Tensor, size: int) -> Tensor:
    """Resizes the short side of (3, H, W) to ``size`` and takes the centre ``size`` x ``size``."""
    h, w = image.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    image = _resize(image, (size, new_long) if h <= w else (new_long, size))
    h, w = image.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[:, top:top + size, left:left + size]


def normalize(image: Tensor) -> Tensor:
    """ImageNet normalization of (3, ...) values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, *([1] * (image.dim() - 1)))
    std = torch.tensor(IMAGENET_STD).view(3, *([1] * (image.dim() - 1)))
    return (image - mean) / std


class FrameTransform:
    """The paper's frame pipeline for one clip.

    Args:
        size: output side S (224 in the paper).
        train: random resized crop + flip (True) or short-side resize + centre crop (False).
    """

    def __init__(self, size: int = 224, train: bool = False) -> None:
        self.size, self.train = size, train

    def __call__(self, frames: Sequence[Tensor], num_frames: int) -> Tensor:
        """Crops, flips and normalizes the frames; missing frames (fewer than ``num_frames``)
        stay zero after normalization, as in the authors' loaders.

        Args:
            frames: k <= num_frames tensors (3, H_i, W_i) in [0, 1].

        Returns:
            (3, num_frames, S, S).
        """
        out = torch.zeros(3, num_frames, self.size, self.size)
        if not frames:
            return out
        if self.train:
            h0, w0 = frames[0].shape[-2:]
            top, left, h, w = random_crop_box(h0, w0)
            box = (top / h0, left / w0, h / h0, w / w0)  # relative, in case frame sizes differ
            flip = bool(torch.rand(1) < 0.5)
        for t, frame in enumerate(frames[:num_frames]):
            if self.train:
                frame = self._crop(frame, box)
                frame = frame.flip(-1) if flip else frame
            else:
                frame = center_crop(frame, self.size)
            out[:, t] = normalize(frame)
        return out

    def _crop(self, frame: Tensor, box) -> Tensor:
        H, W = frame.shape[-2:]
        top, left = int(round(box[0] * H)), int(round(box[1] * W))
        h, w = max(1, int(round(box[2] * H))), max(1, int(round(box[3] * W)))
        return _resize(frame[:, top:top + h, left:left + w], (self.size, self.size))
