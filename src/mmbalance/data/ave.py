"""AVE (28 audio-visual events) in the layout the published loaders read.

Layout under ``data.root``::

    trainSet.txt, valSet.txt, testSet.txt   lines ``Category&VideoID&Quality&start&end``
    Audio-1004-SE/<VideoID>.pkl             pickled log spectrogram per video (257 x 1004)
    Image-01-FPS-SE/<VideoID>/<n>.jpg       frames of the event segment at 1 fps

The official split files are used as they are (train/val/test). As in the authors' loader,
a video whose spectrogram or frame folder is missing is skipped, and a video listed twice in
a split is kept once; both are counted in the log. ``data.spectrogram_dir`` names another
spectrogram folder. The first 4 sorted frames are used (``data.num_frames``); a shorter
clip is zero-padded and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

from ..errors import DataError
from .clips import (Clip, av_bundle, first_shape, frame_paths, image_frames, log_skips, pickled_audio, read_lines,
                    require_root, spectrogram_source)

#: AVE's 28 categories in the order of the dataset's annotations (label = position)
CLASSES = (
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
    "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)", "Truck",
    "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus",
    "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
)
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
EXPECTED = "trainSet.txt/valSet.txt/testSet.txt, Audio-1004-SE/ and Image-01-FPS-SE/"


def load_ave(cfg: Any):
    """Builds the AVE :class:`DataBundle` from ``cfg`` (a DataConfig).

    Items: ``{"audio": (257, 1004), "video": (3, 4, S, S)}`` and a label in 0-27.
    """
    root = require_root(cfg, "ave", EXPECTED)
    num_frames = cfg.num_frames or 4
    spec_dir = spectrogram_source(root, cfg, "Audio-1004-SE")
    skipped: List[str] = []
    duplicates: List[str] = []
    padded: List[str] = []
    splits = {}
    for split, name in SPLIT_FILES.items():
        splits[split] = _clips(root / name, root, spec_dir, num_frames, (skipped, duplicates, padded))
        if not splits[split]:
            raise DataError(f"ave: no video of {root / name} has both its spectrogram in {spec_dir} and its "
                            "frames in Image-01-FPS-SE/")
    log_skips("ave", "video(s) whose spectrogram or frame folder is missing", skipped, "the authors' loader does")
    log_skips("ave", "repeated video(s) within a split", duplicates, "the authors' loader does")
    log_skips("ave", "video(s) with fewer frames than needed, zero-padded", padded, "the authors' loader does")
    shape = first_shape(splits["train"], pickled_audio)
    return av_bundle(splits, pickled_audio, image_frames, shape, cfg, num_frames, len(CLASSES))


def _clips(path: Path, root: Path, spec_dir: Path, num_frames: int, notes) -> List[Clip]:
    skipped, duplicates, padded = notes
    clips, seen = [], set()
    for number, line in enumerate(read_lines(path, "lines 'Category&VideoID&Quality&start&end'"), start=1):
        fields = line.split("&")
        if len(fields) < 2 or fields[0] not in CLASSES or not fields[1]:
            raise DataError(f"{path}:{number}: expected 'Category&VideoID&Quality&start&end' with one of AVE's "
                            f"28 categories, got {line!r}")
        video = fields[1]
        audio, folder = spec_dir / f"{video}.pkl", root / "Image-01-FPS-SE" / video
        if not audio.is_file() or not folder.is_dir():
            skipped.append(str(audio if not audio.is_file() else folder))
            continue
        if video in seen:
            duplicates.append(video)
            continue
        seen.add(video)
        clips.append(Clip(video, CLASSES.index(fields[0]), audio, frame_paths(folder, num_frames, padded)))
    return clips
