"""AVE (28 audio-visual events) in the layout the published loaders read.

Layout under ``data.root``::

    trainSet.txt, valSet.txt, testSet.txt   lines ``Category&VideoID&Quality&start&end``
    Audio-1004-SE/<VideoID>.pkl             pickled log spectrogram per video (257 x 1004)
    Audios/<VideoID>.wav                    the video's sound track (``data.audio_input=waveform``)
    Image-01-FPS-SE/<VideoID>/<n>.jpg       frames of the event segment at 1 fps

The official split files are used as they are (train/val/test). As in the authors' loader,
a video whose audio or frame folder is missing is skipped, and a video listed twice in
a split is kept once; both are counted in the log. ``data.spectrogram_dir`` names another
spectrogram folder. The first 4 sorted frames are used (``data.num_frames``); a shorter
clip is zero-padded and counted.

Waveforms (``data.audio_input=waveform``; the paper's HuBERT -> Conformer model, A.3): the
authors' ``AVEDataset_vit`` (kkontras/MCR ``datasets/AVE/AVE_Dataset.py``, with ``return_data``
audio on and spectrogram off, as ``configs/AVE/release/vit/MCR.json`` sets it) reads
``Audios/<VideoID>.wav``, the sound track their ``datasets/AVE/mp4_to_wav.py`` writes from each
``AVE/<VideoID>.mp4`` with moviepy (its defaults: 44.1 kHz, 16-bit, two channels). It
resamples to 16 kHz and gives HuBERT the whole clip (AVE's videos last 10 s), each batch
zero-padded to its longest clip; the spectrogram pickles are then not needed, and a video
without its WAV is skipped. Here each WAV is resampled to ``data.sample_rate`` (default 16 kHz),
cut or tiled to ``data.audio_seconds`` (the Conformer configs set 10 s; the default 3 s would
keep only the first 3 s) and clipped to [-1, 1], as CREMA-D's waveforms are. Where this differs
from theirs: channels are averaged (their torchaudio reader keeps the first channel); a clip
shorter than ``audio_seconds`` is tiled, not zero-padded; the resampler is
``scipy.signal.resample_poly``, not ``torchaudio.functional.resample``. Their loader also
computes a waveform mean and std (``wav_norm.pkl``) that it never applies; none is applied here.
Items: ``{"audio": (round(rate * audio_seconds),), "video": (3, T, S, S)}``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, List

from ..errors import ConfigError, DataError
from .clips import (Clip, av_bundle, first_shape, frame_paths, image_frames, log_skips, pickled_audio, read_lines,
                    require_root, spectrogram_source, wav_audio, waveform_input)

#: AVE's 28 categories in the order of the dataset's annotations (label = position)
CLASSES = (
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
    "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)", "Truck",
    "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus",
    "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
)
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
EXPECTED = "trainSet.txt/valSet.txt/testSet.txt, Audio-1004-SE/ and Image-01-FPS-SE/"
WAV_DIR = "Audios"
WAV_LAYOUT = ("Audios/<VideoID>.wav, one WAV per video (its whole sound track, as kkontras/MCR "
              "datasets/AVE/mp4_to_wav.py writes them from AVE/<VideoID>.mp4)")
WAV_RATE = 16000  # the authors' AVEDataset_vit sampling_rate


def load_ave(cfg: Any):
    """Builds the AVE :class:`DataBundle` from ``cfg`` (a DataConfig).

    Items: ``{"audio": (257, 1004), "video": (3, 4, S, S)}`` and a label in 0-27; with
    ``data.audio_input=waveform`` the audio is ``(round(rate * data.audio_seconds),)``.
    """
    root = require_root(cfg, "ave", EXPECTED)
    num_frames = cfg.num_frames or 4
    waveform = waveform_input(cfg)
    if waveform and cfg.spectrogram_dir:
        raise ConfigError("data.spectrogram_dir and data.audio_input=waveform exclude each other: AVE's waveforms "
                          f"are read from {WAV_LAYOUT}")
    if waveform:
        audio_dir, what = root / WAV_DIR, "WAV"
        if not audio_dir.is_dir():
            raise DataError(f"ave: data.audio_input=waveform reads {WAV_LAYOUT}; {audio_dir} is not a folder")
    else:
        audio_dir, what = spectrogram_source(root, cfg, "Audio-1004-SE"), "spectrogram"
    suffix = ".wav" if waveform else ".pkl"
    skipped: List[str] = []
    duplicates: List[str] = []
    padded: List[str] = []
    splits = {}
    for split, name in SPLIT_FILES.items():
        splits[split] = _clips(root / name, root, audio_dir, suffix, num_frames, (skipped, duplicates, padded))
        if not splits[split]:
            raise DataError(f"ave: no video of {root / name} has both its {what} in {audio_dir} and its "
                            "frames in Image-01-FPS-SE/")
    log_skips("ave", f"video(s) whose {what} or frame folder is missing", skipped, "the authors' loader does")
    log_skips("ave", "repeated video(s) within a split", duplicates, "the authors' loader does")
    log_skips("ave", "video(s) with fewer frames than needed, zero-padded", padded, "the authors' loader does")
    if waveform:
        rate = cfg.sample_rate or WAV_RATE
        load_audio = partial(wav_audio, rate=rate, seconds=cfg.audio_seconds, waveform=True)
        shape = (int(round(rate * cfg.audio_seconds)),)
    else:
        load_audio, shape = pickled_audio, first_shape(splits["train"], pickled_audio)
    return av_bundle(splits, load_audio, image_frames, shape, cfg, num_frames, len(CLASSES))


def _clips(path: Path, root: Path, audio_dir: Path, suffix: str, num_frames: int, notes) -> List[Clip]:
    skipped, duplicates, padded = notes
    clips, seen = [], set()
    for number, line in enumerate(read_lines(path, "lines 'Category&VideoID&Quality&start&end'"), start=1):
        fields = line.split("&")
        if len(fields) < 2 or fields[0] not in CLASSES or not fields[1]:
            raise DataError(f"{path}:{number}: expected 'Category&VideoID&Quality&start&end' with one of AVE's "
                            f"28 categories, got {line!r}")
        video = fields[1]
        audio, folder = audio_dir / f"{video}{suffix}", root / "Image-01-FPS-SE" / video
        if not audio.is_file() or not folder.is_dir():
            skipped.append(str(audio if not audio.is_file() else folder))
            continue
        if video in seen:
            duplicates.append(video)
            continue
        seen.add(video)
        clips.append(Clip(video, CLASSES.index(fields[0]), audio, frame_paths(folder, num_frames, padded)))
    return clips
