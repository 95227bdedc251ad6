"""UCF-51 (the audio-visual part of UCF101) in the single-pickle layout the published loader reads.

Layout under ``data.root``::

    UCF_fps1_audio16000.pkl     {"v_Class_g08_c01.avi": {"data": {"vision": (F, H, W, 3) uint8
                                 frames at 1 fps, "audio": (L,) waveform at 16 kHz},
                                 "label": UCF101 class index}, ...}
    ucfTrainTestlist/trainlist0{k}.txt, testlist0{k}.txt
                                the official splits: ``Class/v_Class_g08_c01.avi [label]``
    class_change.pkl            optional {UCF101 label: UCF-51 label}; without it the labels
                                present in the pickle are renumbered in sorted order

``data.fold=k`` (1-3, default 1) picks the official split. As in the authors' loader, a listed
clip is skipped (and counted in the log) when the pickle does not hold it (UCF101 clips
without audio), when it has fewer frames than ``data.num_frames`` (4), or when its audio
has fewer than 2 samples. The validation set is a seeded, class-stratified
``data.val_fraction`` of the training groups (``Class_gNN``: one group's clips stay together).

Audio: the first 3 s at 16 kHz (``data.sample_rate`` resamples), tiled when shorter, clipped
to [-1, 1], log STFT n_fft 512 hop 353 -> (257, 136). Frames: the first 4, scaled to [0, 1]
before the ImageNet normalization (the authors skip the scaling).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..errors import DataError
from . import safe_pickle
from .audio import fixed_waveform, spectrogram_shape, waveform_spectrogram
from .clips import Clip, av_bundle, carve_validation, log_skips, read_lines, require_root, waveform_input
from .vision import array_to_image

PICKLE = "UCF_fps1_audio16000.pkl"
LISTS = "ucfTrainTestlist"
SOURCE_RATE = 16000
EXPECTED = f"{PICKLE} and {LISTS}/"
ENTRY = "{'data': {'vision': (F, H, W, 3) frames, 'audio': (L,) waveform}, 'label': int}"


def load_ucf51(cfg: Any):
    """Builds the UCF-51 :class:`DataBundle` from ``cfg`` (a DataConfig).

    Items: ``{"audio": (257, 136), "video": (3, 4, S, S)}`` and a label in 0-50.
    """
    root = require_root(cfg, "ucf51", EXPECTED)
    fold = cfg.fold if cfg.fold is not None else 1
    if fold not in (1, 2, 3):
        raise DataError(f"ucf51: data.fold must be 1, 2 or 3 (the official splits), got {fold}")
    table = _read_pickle(root / PICKLE)
    remap = _class_map(root, table)
    num_frames = cfg.num_frames or 4
    notes: Dict[str, List[str]] = {"absent": [], "frames": [], "audio": []}
    lists = {s: root / LISTS / f"{s}list0{fold}.txt" for s in ("train", "test")}
    clips = {s: _clips(table, _names(p), remap, num_frames, notes, root / PICKLE) for s, p in lists.items()}
    log_skips("ucf51", f"listed clip(s) absent from {PICKLE} (no audio)", notes["absent"], "the 51-class subset does")
    log_skips("ucf51", f"clip(s) with fewer than {num_frames} frames", notes["frames"], "the authors' loader does")
    log_skips("ucf51", "clip(s) with fewer than 2 audio samples", notes["audio"], "the authors' loader does")
    for split, items in clips.items():
        if not items:
            raise DataError(f"ucf51: no clip of {lists[split]} is usable from {root / PICKLE}")
    train = clips["train"]
    groups = ["_".join(c.key.split("_")[1:3]) for c in train]
    tr, va = carve_validation([c.label for c in train], cfg.val_fraction, cfg.seed, groups)
    splits = {"train": [train[i] for i in tr], "val": [train[i] for i in va], "test": clips["test"]}
    rate, waveform = cfg.sample_rate or SOURCE_RATE, waveform_input(cfg)
    load_audio = partial(array_audio, rate=rate, seconds=cfg.audio_seconds, waveform=waveform)
    shape = (int(round(rate * cfg.audio_seconds)),) if waveform else spectrogram_shape(rate, cfg.audio_seconds)
    return av_bundle(splits, load_audio, array_frames, shape, cfg, num_frames, max(remap.values()) + 1)


def array_audio(clip: Clip, rate: int, seconds: float, waveform: bool = False):
    """(257, T_a) log spectrogram of the clip's 16 kHz waveform (with ``waveform``: the (L,)
    waveform at ``rate``, for pretrained audio backbones)."""
    wave = np.asarray(clip.audio, dtype=np.float32)
    if waveform:
        return fixed_waveform(wave, SOURCE_RATE, rate, seconds)
    return waveform_spectrogram(wave, SOURCE_RATE, rate, seconds)


def array_frames(clip: Clip):
    """The clip's frames as (3, H, W) tensors in [0, 1]."""
    return [array_to_image(frame) for frame in clip.frames]


def _read_pickle(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected the UCF-51 pickle {{filename: {ENTRY}}})")
    try:
        table = safe_pickle.load(path)
    except safe_pickle.UnsafePickleError:
        raise
    except Exception as exc:  # any unpickling failure means the same thing here
        raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(table, dict):
        raise DataError(f"{path} holds a {type(table).__name__}; expected a dict {{filename: {ENTRY}}}")
    return table


def _class_map(root: Path, table: Dict[str, Any]) -> Dict[int, int]:
    path = root / "class_change.pkl"
    if path.is_file():
        try:
            mapping = {int(k): int(v) for k, v in safe_pickle.load(path).items()}
        except safe_pickle.UnsafePickleError:
            raise
        except Exception as exc:  # any unpickling failure means the same thing here
            raise DataError(f"{path} is not a readable pickle of {{UCF101 label: UCF-51 label}} "
                            f"({type(exc).__name__})") from None
        return mapping
    labels = sorted({int(e["label"]) for e in table.values() if isinstance(e, dict) and "label" in e})
    return {label: i for i, label in enumerate(labels)}


def _names(path: Path) -> List[str]:
    return [line.split(" ")[0].split("/")[-1] for line in read_lines(path, "lines 'Class/v_Class_gNN_cNN.avi'")]


def _clips(table, names: List[str], remap: Dict[int, int], num_frames: int, notes, path: Path) -> List[Clip]:
    clips = []
    for name in names:
        if name not in table:
            notes["absent"].append(name)
            continue
        vision, audio, label = _entry(table[name], name, path)
        if vision.shape[0] < num_frames:
            notes["frames"].append(name)
        elif len(audio) < 2:
            notes["audio"].append(name)
        elif label not in remap:
            raise DataError(f"{path}: entry {name!r} has label {label}, which class_change.pkl does not map")
        else:
            clips.append(Clip(name, remap[label], audio, vision[:num_frames]))
    return clips


def _entry(entry: Any, name: str, path: Path):
    try:
        vision, audio, label = entry["data"]["vision"], entry["data"]["audio"], int(entry["label"])
        vision, audio = np.asarray(vision), np.asarray(audio).reshape(-1)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: entry {name!r} is not {ENTRY}") from None
    if vision.ndim != 4 or vision.shape[-1] != 3:
        raise DataError(f"{path}: entry {name!r} has vision of shape {vision.shape}; expected (F, H, W, 3)")
    return vision, audio, label
