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
"""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..errors import DataError
from . import safe_pickle
from .audio import spectrogram_shape
from .clips import (Clip, av_bundle, carve_validation, first_shape, frame_paths, image_frames, log_skips,
                    pickled_audio, read_lines, require_root, spectrogram_source, wav_audio, waveform_input)

CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
EXPECTED = "AudioWAV/, Image-01-FPS/ and train.csv/test.csv (or data_splits_VALV.pkl)"
FOLD_FILES = ("data_splits_VALV.pkl", "data_splits_VALV.json")
Rows = List[Tuple[str, int]]


def load_cremad(cfg: Any):
    """Builds the CREMA-D :class:`DataBundle` from ``cfg`` (a DataConfig).

    Items: ``{"audio": (257, 188), "video": (3, 3, S, S)}`` and a label in 0-5.
    """
    root = require_root(cfg, "cremad", EXPECTED)
    if cfg.fold is not None:
        rows = _fold_rows(root, cfg.fold)
    else:
        rows = {"train": _read_csv(root / "train.csv"), "test": _read_csv(root / "test.csv")}
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
    if spec_dir is not None:
        load_audio, shape = pickled_audio, first_shape(splits["train"], pickled_audio)
    else:
        rate, waveform = cfg.sample_rate or 22050, waveform_input(cfg)
        load_audio = partial(wav_audio, rate=rate, seconds=cfg.audio_seconds, waveform=waveform)
        shape = (int(round(rate * cfg.audio_seconds)),) if waveform else spectrogram_shape(rate, cfg.audio_seconds)
    return av_bundle(splits, load_audio, image_frames, shape, cfg, num_frames, len(CLASSES))


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
