"""CREMA-D (6 emotions, audio + video) in the layout the published loaders read.

Layout under ``data.root``::

    AudioWAV/<clip>.wav                 e.g. 1001_DFA_ANG_XX.wav (16 kHz)
    Image-01-FPS/<clip>/<nnnnn>.jpg     frames at 1 fps
    train.csv, test.csv                 lines ``clip,LABEL`` (LABEL in NEU HAP SAD FEA DIS ANG)
    data_splits_VALV.pkl                optional: speaker-disjoint folds (JSON text despite
                                        the name), {"1": {"train": [...], "val": [...],
                                        "test": [...]}, ..., "5": ...}, entries
                                        ``<clip>.wav`` optionally followed by ``-<anything>``

``data.fold=k`` (1-5; the authors' config ``fold: k-1``) uses fold k of Goncalves et al.
(about 4040/880/900 clips, no actor on two sides); without it, ``train.csv`` minus a
seeded stratified ``data.val_fraction`` is the training set and ``test.csv`` the test set.
Labels come from the CSV, or in the fold file from the clip name (its third ``_`` field).
A clip whose WAV or frame folder is missing is skipped, as the authors' loader does, and
counted in the log. ``data.spectrogram_dir`` reads precomputed ``<clip>.pkl`` spectrograms
instead of the WAV files.

Preprocessing (paper A.2): audio resampled to 22.05 kHz (``data.sample_rate``), tiled to 3 s
(``data.audio_seconds``), log STFT (257 x 188), or the waveform itself with
``data.audio_input=waveform``; the first 3 sorted frames (``data.num_frames``).

Face features (``data.features=true``; the paper's Conformer models, A.3): the video modality
is the per-frame facial features the authors' extractor writes
(``models/VAVL_git/facial_features/face_extractor.py`` in kkontras/MCR: MTCNN-style face
detection on every frame of ``VideoFlash/<clip>.flv``, each face crop resized to 224 x 224,
ImageNet-normalized, through a frozen EfficientNet-B2 without its classifier)::

    Face_features/<clip>.npy            np.save of a float32 array (F, 1408): one row per
                                        frame with a detected face, in frame order

A clip with no detected face has no file; such clips (and clips without their WAV) are
skipped and counted, as the authors' loader skips them. Each feature is standardized with the
mean and std over the training clips' frames (the authors' ``norm_face_path`` statistics; here
from at most 512 evenly spaced training clips), the first 150 frames are kept (their collate's
cap; ``data.num_frames`` sets another) and shorter clips are padded with zero rows, which the
sequence encoders (``conformer``, ``transformer_seq``) treat as padding. Items:
``{"audio": ..., "video": (150, 1408)}``. Files are read with ``allow_pickle=False``; every
file's header (shape, dtype) is checked while loading and its values when read.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from . import safe_pickle
from .audio import spectrogram_shape
from .clips import (AudioVisualDataset, Clip, av_bundle, carve_validation, first_shape, frame_paths, image_frames,
                    log_skips, pickled_audio, read_lines, require_root, spectrogram_source, wav_audio, waveform_input)

CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
EXPECTED = "AudioWAV/, Image-01-FPS/ and train.csv/test.csv (or data_splits_VALV.pkl)"
FOLD_FILES = ("data_splits_VALV.pkl", "data_splits_VALV.json")
Rows = List[Tuple[str, int]]
FACES_DIR = "Face_features"
FACES_LAYOUT = ("Face_features/<clip>.npy, one float array (F, 1408) per clip: a row per video frame with a "
                "detected face, as kkontras/MCR models/VAVL_git/facial_features/face_extractor.py writes them")
MAX_FACES = 150  # the authors' collate keeps the first 150 frames of a clip
STATS_CLIPS = 512  # training clips the face statistics are taken from


def load_cremad(cfg: Any):
    """Builds the CREMA-D :class:`DataBundle` from ``cfg`` (a DataConfig).

    Items: ``{"audio": (257, 188), "video": (3, 3, S, S)}`` and a label in 0-5.
    """
    root = require_root(cfg, "cremad", EXPECTED)
    if cfg.fold is not None:
        rows = _fold_rows(root, cfg.fold)
    else:
        rows = {"train": _read_csv(root / "train.csv"), "test": _read_csv(root / "test.csv")}
    if cfg.features:
        return _faces_bundle(root, rows, cfg)
    num_frames = cfg.num_frames or 3
    spec_dir = spectrogram_source(root, cfg)
    skipped: List[str] = []
    padded: List[str] = []
    splits = {s: _clips(root, spec_dir, r, num_frames, skipped, padded) for s, r in rows.items()}
    if "val" not in splits:  # a seeded stratified share of train.csv's clips that exist
        train = splits["train"]
        tr, va = carve_validation([c.label for c in train], cfg.val_fraction, cfg.seed)
        splits = {"train": [train[i] for i in tr], "val": [train[i] for i in va], "test": splits["test"]}
    log_skips("cremad", "clip(s) whose WAV or frame folder is missing", skipped, "the authors' loader does")
    log_skips("cremad", "clip(s) with fewer frames than needed, zero-padded", padded, "the authors' loader does")
    for split, clips in splits.items():
        if not clips:
            raise DataError(f"cremad: no {split} clip under {root} has both AudioWAV/<clip>.wav and "
                            "Image-01-FPS/<clip>/")
    load_audio, shape = _audio_source(cfg, spec_dir, splits["train"])
    return av_bundle(splits, load_audio, image_frames, shape, cfg, num_frames, len(CLASSES))


def _audio_source(cfg: Any, spec_dir, train: List[Clip]):
    """(clip -> audio tensor, the shape every clip's audio has)."""
    if spec_dir is not None:
        return pickled_audio, first_shape(train, pickled_audio)
    rate, waveform = cfg.sample_rate or 22050, waveform_input(cfg)
    load_audio = partial(wav_audio, rate=rate, seconds=cfg.audio_seconds, waveform=waveform)
    return load_audio, ((int(round(rate * cfg.audio_seconds)),) if waveform else spectrogram_shape(rate, cfg.audio_seconds))


def _read_csv(path: Path) -> Rows:
    rows = []
    lines = read_lines(path, "lines 'clip,LABEL'")
    for number, fields in enumerate(csv.reader(lines), start=1):
        if len(fields) < 2 or fields[1].strip() not in CLASSES:
            raise DataError(f"{path}:{number}: expected 'clip,LABEL' with LABEL in {' '.join(CLASSES)}, "
                            f"got {','.join(fields)!r}")
        rows.append((fields[0].strip(), CLASSES.index(fields[1].strip())))
    return rows


def _fold_rows(root: Path, fold: int) -> Dict[str, Rows]:
    path = next((root / n for n in FOLD_FILES if (root / n).is_file()), None)
    if path is None:
        raise DataError(f"data.fold={fold}: {root / FOLD_FILES[0]} does not exist (expected the "
                        "speaker-disjoint folds of Goncalves et al.)")
    table = _read_fold_file(path)
    key = str(fold)
    if not isinstance(table, dict) or key not in table:
        found = ", ".join(map(str, table)) if isinstance(table, dict) else type(table).__name__
        raise DataError(f"{path}: no fold {key!r} (expected keys '1'-'5', found {found})")
    return {split: _fold_entries(path, key, table[key], split) for split in ("train", "val", "test")}


def _read_fold_file(path: Path):
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    try:
        return safe_pickle.loads(raw, path, "fold file")
    except safe_pickle.UnsafePickleError:
        raise
    except Exception as exc:  # any unpickling failure means the same thing here
        raise DataError(f"{path} is neither JSON nor a pickle of the folds ({type(exc).__name__})") from None


def _fold_entries(path: Path, key: str, fold: Any, split: str) -> Rows:
    if not isinstance(fold, dict) or not isinstance(fold.get(split), list):
        raise DataError(f"{path}: fold {key!r} has no list {split!r} (expected train, val and test)")
    rows = []
    for entry in fold[split]:
        stem = str(entry).split("-")[0].rsplit(".", 1)[0]
        parts = stem.split("_")
        if len(parts) < 3 or parts[2] not in CLASSES:
            raise DataError(f"{path}: fold {key!r} {split} entry {entry!r} is not a CREMA-D clip name "
                            "like 1001_DFA_ANG_XX.wav")
        rows.append((stem, CLASSES.index(parts[2])))
    return rows


def _clips(root: Path, spec_dir, rows: Rows, num_frames: int, skipped: List[str], padded: List[str]) -> List[Clip]:
    clips = []
    for stem, label in rows:
        audio = spec_dir / f"{stem}.pkl" if spec_dir is not None else root / "AudioWAV" / f"{stem}.wav"
        folder = root / "Image-01-FPS" / stem
        if not audio.is_file() or not folder.is_dir():
            skipped.append(str(audio if not audio.is_file() else folder))
            continue
        clips.append(Clip(stem, label, audio, frame_paths(folder, num_frames, padded)))
    return clips


# ------------------------------------------------------------------ face features

@dataclass
class FaceClip(Clip):
    """A clip whose video is its face-feature file (``frames`` stays empty)."""

    faces: Path = Path()


def _faces_bundle(root: Path, rows: Dict[str, Rows], cfg: Any):
    from .bundle import DataBundle

    folder = root / FACES_DIR
    if not folder.is_dir():
        raise DataError(f"cremad: data.features=true reads per-frame face features, but {folder} does not exist "
                        f"(expected {FACES_LAYOUT})")
    spec_dir = spectrogram_source(root, cfg)
    skipped: List[str] = []
    splits = {s: _face_clips(root, spec_dir, r, skipped) for s, r in rows.items()}
    if "val" not in splits:
        train = splits["train"]
        tr, va = carve_validation([c.label for c in train], cfg.val_fraction, cfg.seed)
        splits = {"train": [train[i] for i in tr], "val": [train[i] for i in va], "test": splits["test"]}
    log_skips("cremad", "clip(s) whose WAV or face-feature file is missing", skipped, "the authors' loader does")
    for split, clips in splits.items():
        if not clips:
            raise DataError(f"cremad: no {split} clip under {root} has both AudioWAV/<clip>.wav and "
                            f"{FACES_LAYOUT}")
    dim = _face_dims([c for clips in splits.values() for c in clips])
    mean, std = face_statistics([c.faces for c in splits["train"]], dim)
    faces = FaceFeatures(mean, std, cfg.num_frames or MAX_FACES)
    load_audio, shape = _audio_source(cfg, spec_dir, splits["train"])
    sets = {s: AudioVisualDataset(clips, load_audio, faces, shape, faces.max_len, _as_is)
            for s, clips in splits.items()}
    shapes = {"audio": tuple(shape), "video": (faces.max_len, dim)}
    encoders = {"audio": None if len(shape) == 1 else "resnet18_audio", "video": None}
    return DataBundle(sets["train"], sets["val"], sets["test"], shapes, len(CLASSES), "classification",
                      encoders=encoders)


def _face_clips(root: Path, spec_dir, rows: Rows, skipped: List[str]) -> List[FaceClip]:
    clips = []
    for stem, label in rows:
        audio = spec_dir / f"{stem}.pkl" if spec_dir is not None else root / "AudioWAV" / f"{stem}.wav"
        faces = root / FACES_DIR / f"{stem}.npy"
        if not audio.is_file() or not faces.is_file():
            skipped.append(str(audio if not audio.is_file() else faces))
            continue
        clips.append(FaceClip(stem, label, audio, [], faces))
    return clips


def _as_is(video: Tensor, num_frames: int) -> Tensor:
    return video


def _open_faces(path: Path, mmap: bool) -> np.ndarray:
    """The (F, D) array of one face-feature file, or DataError naming the file and the layout."""
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"face-feature file {path} is not a readable .npy array ({exc}); expected "
                        f"{FACES_LAYOUT}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive under the .npy name
        arr.close()
        raise DataError(f"face-feature file {path} is an .npz archive; expected {FACES_LAYOUT}")
    numeric = np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1 or not numeric:
        raise DataError(f"face-feature file {path} holds a {arr.dtype} array of shape {arr.shape}; expected "
                        f"{FACES_LAYOUT}, with F >= 1")
    return arr


def _face_dims(clips: List[FaceClip]) -> int:
    """D, the same in every file (checked from the headers, no values read)."""
    dim = None
    for clip in clips:
        d = _open_faces(clip.faces, mmap=True).shape[1]
        if dim is not None and d != dim:
            raise DataError(f"face-feature file {clip.faces} has {d} features per frame, {clips[0].faces} has {dim}")
        dim = d
    return int(dim)


def face_statistics(paths: List[Path], dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (float32, (D,)) over every frame of at most ``STATS_CLIPS``
    evenly spaced files; a constant feature gets std 1."""
    picks = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), STATS_CLIPS)).round().astype(int))
    total, squares, count = np.zeros(dim), np.zeros(dim), 0
    for i in picks:
        rows = _checked(paths[i], _open_faces(paths[i], mmap=False), dim).astype(np.float64)
        total, squares, count = total + rows.sum(0), squares + (rows ** 2).sum(0), count + rows.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def _checked(path: Path, arr: np.ndarray, dim: int) -> np.ndarray:
    if arr.shape[1] != dim:
        raise DataError(f"face-feature file {path} has {arr.shape[1]} features per frame, expected {dim}")
    if not np.isfinite(arr).all():
        raise DataError(f"face-feature file {path} holds NaN or infinite values; expected {FACES_LAYOUT}")
    return arr


@dataclass
class FaceFeatures:
    """Clip -> (max_len, D) float32: the clip's face features, standardized, the first
    ``max_len`` frames, zero rows after the last one."""

    mean: np.ndarray
    std: np.ndarray
    max_len: int

    def __call__(self, clip: FaceClip) -> Tensor:
        rows = _checked(clip.faces, _open_faces(clip.faces, mmap=False), self.mean.shape[0])[:self.max_len]
        out = torch.zeros(self.max_len, self.mean.shape[0])
        out[:rows.shape[0]] = torch.from_numpy(((rows - self.mean) / self.std).astype(np.float32))
        return out
