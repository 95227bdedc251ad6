"""What the audio-visual datasets (CREMA-D, AVE, UCF-51) share: the clip list, the dataset
that turns a clip into ``({"audio": (F, T_a), "video": (3, T, S, S)}, label)``, and the
helpers for roots, split files, validation splits and counted skips."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .vision import FrameTransform

log = logging.getLogger("mmbalance.data")

#: model order of the audio-visual datasets: audio first (the authors' modality 0)
AV_ENCODERS = {"audio": "resnet18_audio", "video": "resnet18_video"}


@dataclass
class Clip:
    """One sample of an audio-visual dataset.

    Attributes:
        key: the clip's name in the dataset (file stem, video id).
        label: class index.
        audio: where the audio comes from (a WAV or pickle path, or an in-memory waveform).
        frames: sorted frame paths (at most T), or an (F, H, W, 3) array of frames.
    """

    key: str
    label: int
    audio: Any
    frames: Any = field(default_factory=list)


class AudioVisualDataset(Dataset):
    """Items ``({"audio": (F, T_a) float32, "video": (3, T, S, S) float32}, label int64)``.

    Args:
        clips: the split's clips.
        load_audio: clip -> (F, T_a) log spectrogram.
        load_frames: clip -> list of (3, H, W) frames in [0, 1] (at most ``num_frames``).
        audio_shape: the (F, T_a) every spectrogram (or the (L,) every waveform) must have.
        num_frames: T.
        transform: the split's :class:`FrameTransform`.
    """

    def __init__(self, clips: Sequence[Clip], load_audio: Callable[[Clip], Tensor],
                 load_frames: Callable[[Clip], List[Tensor]], audio_shape: Tuple[int, ...],
                 num_frames: int, transform: FrameTransform) -> None:
        self.clips, self.load_audio, self.load_frames = list(clips), load_audio, load_frames
        self.audio_shape, self.num_frames, self.transform = tuple(audio_shape), num_frames, transform

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        clip = self.clips[i]
        audio = self.load_audio(clip)
        if tuple(audio.shape) != self.audio_shape:
            where = clip.audio if isinstance(clip.audio, (str, Path)) else f"clip {clip.key}"
            raise DataError(f"{where}: spectrogram of shape {tuple(audio.shape)}, expected {self.audio_shape} "
                            "like the first training clip")
        video = self.transform(self.load_frames(clip), self.num_frames)
        return {"audio": audio.float(), "video": video}, torch.tensor(clip.label, dtype=torch.long)


def require_root(cfg: Any, name: str, expected: str) -> Path:
    """``data.root`` as a Path, or a one-line error saying what the folder should hold; also
    checks the ranges of the real-dataset options."""
    checks = [("data.image_size", cfg.image_size >= 1), ("data.audio_seconds", cfg.audio_seconds > 0),
              ("data.val_fraction", 0 <= cfg.val_fraction < 1),
              ("data.num_frames", cfg.num_frames is None or cfg.num_frames >= 1)]
    for key, ok in checks:
        if not ok:
            raise ConfigError(f"{key} is out of range: {getattr(cfg, key.split('.')[1])!r}")
    if not cfg.root:
        raise ConfigError(f"--data {name} needs --set data.root=PATH, the folder that holds {expected}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"data.root {root} does not exist (expected the {name} folder holding {expected})")
    return root


def read_lines(path: Path, what: str) -> List[str]:
    """Non-empty, stripped lines of a text file (UTF-8, BOM tolerated)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected {what})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable text file (expected {what}): {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def carve_validation(labels: Sequence[int], fraction: float, seed: int,
                     groups: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded, class-stratified train/val split of a training list.

    With ``groups`` whole groups move together (UCF's ``Class_gNN``: clips of one group
    never land on both sides). Each class gives ``round(fraction * n_groups)`` groups
    (at least one overall).

    Returns:
        (train indices, val indices), both sorted.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups if groups is not None else np.arange(len(labels)).astype(str))
    rng = np.random.default_rng(seed)
    val_groups: List[str] = []
    for cls in np.unique(labels):
        names = rng.permutation(np.unique(groups[labels == cls]))
        val_groups += list(names[:int(round(fraction * len(names)))])
    if not val_groups:
        counts = {g: int((groups == g).sum()) for g in np.unique(groups)}
        if len(counts) < 2:
            raise DataError(f"too few training samples ({len(labels)}) to carve a validation split")
        val_groups = [sorted(counts, key=lambda g: (-counts[g], g))[0]]
    is_val = np.isin(groups, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def log_skips(dataset: str, what: str, skipped: List[str], convention: str) -> None:
    """Counts (never silently) samples skipped by a dataset's own convention."""
    if skipped:
        log.warning("%s: skipped %d %s (first: %s), as %s", dataset, len(skipped), what, skipped[0], convention)


def frame_paths(folder: Path, num_frames: int, padded: List[str]) -> List[Path]:
    """The first ``num_frames`` sorted frames of ``folder``; notes a short clip in ``padded``."""
    from .vision import list_frames

    frames = list_frames(folder)
    if not frames:
        raise DataError(f"frame folder {folder} holds no .jpg frames (expected {num_frames})")
    if len(frames) < num_frames:
        padded.append(str(folder))
    return frames[:num_frames]


# ----------------------------------------------------------------- clip readers
# Module-level functions (bound with functools.partial), so DataLoader workers can pickle them.

def wav_audio(clip: Clip, rate: int, seconds: float, waveform: bool = False) -> Tensor:
    """(257, T_a) log spectrogram of the clip's WAV file, or with ``waveform`` its (L,) samples."""
    from .audio import fixed_waveform, read_wav, wav_spectrogram

    if waveform:
        return fixed_waveform(*read_wav(clip.audio), rate, seconds)
    return wav_spectrogram(clip.audio, rate, seconds)


def waveform_input(cfg: Any) -> bool:
    """``data.audio_input``: False for log spectrograms (the paper's ResNet runs), True for
    raw waveforms (for pretrained audio backbones such as wav2vec2)."""
    if cfg.audio_input not in ("spectrogram", "waveform"):
        raise ConfigError(f"data.audio_input must be spectrogram or waveform, got {cfg.audio_input!r}")
    return cfg.audio_input == "waveform"


def pickled_audio(clip: Clip) -> Tensor:
    """(F, T_a) precomputed spectrogram from the clip's pickle."""
    from .audio import load_pickled_array

    return torch.from_numpy(load_pickled_array(clip.audio, "spectrogram"))


def image_frames(clip: Clip) -> List[Tensor]:
    """The clip's frame files as (3, H, W) tensors in [0, 1]."""
    from .vision import load_image

    return [load_image(p) for p in clip.frames]


def spectrogram_source(root: Path, cfg: Any, default_dir: Optional[str] = None) -> Optional[Path]:
    """The folder of precomputed ``<clip>.pkl`` spectrograms (``data.spectrogram_dir``,
    relative to the root unless absolute), or None for WAV files."""
    name = cfg.spectrogram_dir or default_dir
    if name is None:
        return None
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def av_bundle(splits: Dict[str, List[Clip]], load_audio: Callable, load_frames: Callable,
              audio_shape: Tuple[int, ...], cfg: Any, num_frames: int, num_classes: int):
    """The :class:`DataBundle` of an audio-visual dataset (audio first, then video); a
    waveform (1-D audio) gets no default encoder (name one, e.g. ``audio:pretrained``)."""
    from .bundle import DataBundle

    size = cfg.image_size
    sets = {s: AudioVisualDataset(clips, load_audio, load_frames, audio_shape, num_frames,
                                  FrameTransform(size, train=s == "train")) for s, clips in splits.items()}
    shapes = {"audio": tuple(audio_shape), "video": (3, num_frames, size, size)}
    encoders = dict(AV_ENCODERS, audio=None) if len(audio_shape) == 1 else dict(AV_ENCODERS)
    return DataBundle(sets["train"], sets["val"], sets["test"], shapes, num_classes, "classification",
                      encoders=encoders)


def first_shape(clips: List[Clip], load_audio: Callable) -> Tuple[int, int]:
    """The spectrogram shape of the first clip (the shape every other clip must have)."""
    return tuple(load_audio(clips[0]).shape)
