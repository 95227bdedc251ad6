"""Tiny datasets written in the real on-disk layouts, for tests and ``mmbalance data throughput
--fixtures``. WAV files are written with the standard ``wave`` module, JPEGs with Pillow,
pickles with ``pickle`` and HDF5 with h5py, independently of the readers they test.

Frames are constant images whose grey level encodes the frame's position in its folder
(``frame_value(k)``), so a test can tell which frames a loader picked, and in what order.

``signal=True`` plants the label instead, for end-to-end tests that must learn something:
every frame of a clip has grey level ``signal_value(label)``, tones are ``signal_freq(label)``
Hz, spectrograms and feature rows are offset by the label. A model that trains at all then
beats chance by a wide margin; one that does not (broken loader, labels shuffled against
inputs, no learning) stays at chance. AVE, UCF-51 and Sth-Sth frames (and UCF-51 tones) also
get seeded noise, so that no two clips of a class are identical: with identical clips, batch
norm's statistics of a 4-clip batch can hold a single input, and a ResNet that fits the
training batches may still predict one class in evaluation (seen on UCF-51).
"""

from __future__ import annotations

import io
import json
import pickle
import wave as wave_module
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
AVE_CLASSES = ("Church bell", "Bark", "Helicopter")
UCF_CLASSES = {"ApplyEyeMakeup": 0, "Basketball": 7}  # class name -> UCF101 label


def frame_value(k: int) -> int:
    """Grey level of the k-th frame (sorted order) of every fixture clip."""
    return 30 + 40 * k


def signal_value(label: int, classes: int) -> int:
    """Grey level of every frame of a class-``label`` clip under ``signal=True``: 20 to 235."""
    return int(round(20 + 215 * label / max(classes - 1, 1)))


#: s.d. (grey levels) of the pixel noise of planted AVE, UCF-51 and Sth-Sth frames
NOISE = 20.0


def signal_freq(label: int) -> float:
    """Tone (Hz) of a class-``label`` clip under ``signal=True``."""
    return 300.0 + 400.0 * label


def write_wav(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 440.0, amplitude: float = 0.5,
              channels: int = 1, noise=None) -> np.ndarray:
    """A 16-bit sine WAV; returns the int16 samples written, (L,) or with ``channels`` > 1
    (L, channels), channel k at amplitude ``amplitude / (k + 1)`` (so channels differ); ``noise``
    (a numpy Generator) adds a random phase and white noise of s.d. 0.02 (before the amplitude)."""
    t = np.arange(int(round(seconds * rate))) / rate
    phase = 0.0 if noise is None else noise.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * freq * t + phase)
    if noise is not None:
        wave = wave + noise.normal(0, 0.02, size=t.shape)
    scales = amplitude / np.arange(1, channels + 1)
    samples = np.clip(np.round(scales * 32767 * wave[:, None]), -32767, 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave_module.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return samples[:, 0] if channels == 1 else samples


def jpeg_bytes(value: int, size=(24, 32), noise=None) -> bytes:
    """An RGB JPEG of grey level ``value`` and (height, width) ``size``: constant, or with
    ``noise`` (a numpy Generator) pixel noise of s.d. ``NOISE``."""
    from PIL import Image

    pixels = np.full((*size, 3), float(value))
    if noise is not None:
        pixels += noise.normal(0, NOISE, size=pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_frames(folder: Path, count: int, size=(24, 32), value: int | None = None, noise=None) -> List[Path]:
    """``count`` frames ``00001.jpg``... written in reverse order (so only sorting finds them);
    grey level ``frame_value(k)``, or ``value`` for all of them; ``noise`` as in :func:`jpeg_bytes`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{k + 1:05d}.jpg" for k in range(count)]
    for k in reversed(range(count)):
        paths[k].write_bytes(jpeg_bytes(frame_value(k) if value is None else value, size, noise))
    return paths


def write_cremad(root: Path, train_per_class: int = 2, test_per_class: int = 1, frames: int = 4,
                 signal: bool = False) -> Dict[str, list]:
    """CREMA-D: ``AudioWAV/``, ``Image-01-FPS/``, ``train.csv``, ``test.csv`` and a one-fold
    ``data_splits_VALV.pkl`` (JSON). Returns split -> [(clip, class name)]."""
    n = len(CREMAD_CLASSES)
    rows: Dict[str, list] = {"train": [], "test": []}
    actor = 1001
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for cls in CREMAD_CLASSES:
            for _ in range(count):
                clip = f"{actor}_DFA_{cls}_XX"
                label = CREMAD_CLASSES.index(cls)
                write_wav(root / "AudioWAV" / f"{clip}.wav",
                          freq=signal_freq(label) if signal else 200.0 + 10 * (actor % 50))
                write_frames(root / "Image-01-FPS" / clip, frames, value=signal_value(label, n) if signal else None)
                rows[split].append((clip, cls))
                actor += 1
    for split, items in rows.items():
        (root / f"{split}.csv").write_text("".join(f"{c},{label}\n" for c, label in items))
    train = [f"{c}.wav" for c, _ in rows["train"]]
    fold = {"train": train[:-2], "val": train[-2:], "test": [f"{c}.wav-0" for c, _ in rows["test"]]}
    (root / "data_splits_VALV.pkl").write_text(json.dumps({"1": fold}))
    return rows


def write_cremad_faces(root: Path, rows: Dict[str, list], dim: int = 16, frames: Sequence[int] = (3, 7),
                       signal: bool = False, missing: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """CREMA-D per-frame face features as the authors' extractor saves them:
    ``Face_features/<clip>.npy``, ``np.save`` of a float32 (F, ``dim``) array, F cycling through
    ``frames[0]..frames[1]`` over the clips (so padding varies within a batch). ``rows`` is what
    :func:`write_cremad` returned; clips in ``missing`` get no file (no face detected).
    ``signal`` adds 2 x label to every value. Returns clip -> the array written."""
    rng = np.random.default_rng(0)
    low, high = frames
    written: Dict[str, np.ndarray] = {}
    (root / "Face_features").mkdir(parents=True, exist_ok=True)
    for i, (clip, cls) in enumerate(c for split in rows.values() for c in split):
        if clip in missing:
            continue
        values = rng.normal(size=(low + i % (high - low + 1), dim)) + (2.0 * CREMAD_CLASSES.index(cls) if signal else 0)
        written[clip] = values.astype(np.float32)
        np.save(root / "Face_features" / f"{clip}.npy", written[clip])
    return written


def write_ave(root: Path, per_split=(2, 1, 1), frames: int = 5, width: int = 40, signal: bool = False,
              wavs: bool = False, wav_seconds: float = 0.5, wav_rate: int = 44100, wav_channels: int = 2,
              spectrograms: bool = True) -> Dict[str, list]:
    """AVE: the three split files, ``Audio-1004-SE/<id>.pkl`` (257 x ``width``; not with
    ``spectrograms=False``) and ``Image-01-FPS-SE/<id>/``; with ``wavs`` also
    ``Audios/<id>.wav`` as the authors' ``mp4_to_wav.py`` writes them (moviepy's 44.1 kHz,
    16-bit, two channels by default): a :func:`write_wav` tone of ``wav_seconds``, at
    ``signal_freq(label)`` with ``signal`` (random phase and noise), else 200 Hz + 10 Hz per clip.
    Returns split -> [(video id, class name)]."""
    rng = np.random.default_rng(0)
    rows: Dict[str, list] = {}
    names = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
    clip = 0
    for split, count in zip(names, per_split):
        rows[split] = []
        for label, cls in enumerate(AVE_CLASSES):
            for i in range(count):
                vid = f"{split[:2]}{cls[:3].replace(' ', '')}{i:02d}xyz"
                spec = rng.normal(-5 + (3 * label if signal else 0), 2, size=(257, width)).astype(np.float32)
                if spectrograms:
                    (root / "Audio-1004-SE").mkdir(parents=True, exist_ok=True)
                    (root / "Audio-1004-SE" / f"{vid}.pkl").write_bytes(pickle.dumps(spec))
                if wavs:
                    write_wav(root / "Audios" / f"{vid}.wav", seconds=wav_seconds, rate=wav_rate,
                              freq=signal_freq(label) if signal else 200.0 + 10 * clip, channels=wav_channels,
                              noise=rng if signal else None)
                write_frames(root / "Image-01-FPS-SE" / vid, frames,
                             value=signal_value(label, len(AVE_CLASSES)) if signal else None,
                             noise=rng if signal else None)
                rows[split].append((vid, cls))
                clip += 1
        (root / names[split]).write_text("".join(f"{c}&{v}&good&0&10\n" for v, c in rows[split]))
    return rows


def write_ucf51(root: Path, frames: int = 5, size=(24, 32), clips: int = 2, signal: bool = False,
                groups: int = 3) -> Dict[str, list]:
    """UCF-51: ``UCF_fps1_audio16000.pkl``, ``ucfTrainTestlist/{train,test}list01.txt`` and
    ``class_change.pkl``; groups g01 to g``groups - 1`` train, the last group test (``clips``
    clips per group and class), plus one listed clip without audio. Returns split -> [clip
    file name]."""
    table, rows = {}, {"train": [], "test": []}
    t = np.arange(8000) / 16000
    rng = np.random.default_rng(0)
    for cls, label in UCF_CLASSES.items():
        for group in range(1, groups + 1):
            for c in range(1, clips + 1):
                name = f"v_{cls}_g{group:02d}_c{c:02d}.avi"
                if signal:
                    vision, audio = _planted_clip(rng, int(label > 0), 2, frames, size, t)
                else:
                    vision = np.stack([np.full((*size, 3), frame_value(k), np.uint8) for k in range(frames)])
                    audio = (0.5 * np.sin(2 * np.pi * (300 + 50 * label) * t)).astype(np.float32)
                table[name] = {"data": {"vision": vision, "audio": audio}, "label": label}
                rows["train" if group < groups else "test"].append(name)
    rows["train"].append("v_NoAudio_g01_c01.avi")  # in the official list, not in the pickle
    (root / "ucfTrainTestlist").mkdir(parents=True, exist_ok=True)
    (root / "UCF_fps1_audio16000.pkl").write_bytes(pickle.dumps(table))
    (root / "class_change.pkl").write_bytes(pickle.dumps({label: i for i, label in enumerate(UCF_CLASSES.values())}))
    for split, names in rows.items():
        lines = [f"{n.split('_')[1]}/{n}" + (" 1" if split == "train" else "") for n in names]
        (root / "ucfTrainTestlist" / f"{split}list01.txt").write_text("\n".join(lines) + "\n")
    return rows


def _planted_clip(rng, label: int, classes: int, frames: int, size, t: np.ndarray):
    """(frames, H, W, 3) uint8 frames of grey level ``signal_value(label)`` plus pixel noise
    (s.d. ``NOISE``), and a ``signal_freq(label)`` tone of random amplitude and phase plus white
    noise: clips of one class differ, so batch norm's batch statistics vary as with real data."""
    grey = signal_value(label, classes) + rng.normal(0, NOISE, size=(frames, *size, 3))
    vision = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    tone = rng.uniform(0.3, 0.7) * np.sin(2 * np.pi * signal_freq(label) * t + rng.uniform(0, 2 * np.pi))
    return vision, (tone + rng.normal(0, 0.02, size=t.shape)).astype(np.float32)


def affect_table(sizes=(8, 4, 4), steps: int = 6, dims=(5, 4, 6), seed: int = 0, signal: bool = False) -> Dict[str, dict]:
    """A MultiBench-style affect dict: front-padded (N, T, D) arrays, labels in [-3, 3]
    ((N, 1, 1) for train, (N, 1) otherwise), two -inf audio values in train, and one train
    sample whose text is all zero (MultiBench drops it). ``signal``: every unpadded step of
    every modality is offset by the label (shuffled labels, so split order does not give it)."""
    rng = np.random.default_rng(seed)
    table = {}
    for key, n in zip(("train", "valid", "test"), sizes):
        part = {name: rng.normal(size=(n, steps, d)) for name, d in zip(("vision", "audio", "text"), dims)}
        for name in part:
            part[name][:, :2] = 0.0  # front padding
        labels = np.linspace(-3, 3, n)
        if signal:
            labels = rng.permutation(labels)
            for name in part:
                part[name][:, 2:] += labels[:, None, None]
        part["labels"] = labels.reshape(n, 1, 1) if key == "train" else labels.reshape(n, 1)
        part["id"] = np.array([f"{key}{i}" for i in range(n)])
        table[key] = part
    table["train"]["audio"][0, 3, 1] = -np.inf
    table["train"]["audio"][2, 4, 0] = -np.inf
    table["train"]["text"][1] = 0.0
    return table


def write_affect(path: Path, **kwargs) -> Dict[str, dict]:
    """Pickles :func:`affect_table` to ``path`` (``mosi_data.pkl`` / ``mosei_senti_data.pkl``)."""
    table = affect_table(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(table))
    return table


def write_sthsth(root: Path, train: int = 6, val: int = 2, frames: int = 6, templates: Sequence[str] = (
        "Pushing [something] from left to right", "Holding [something] next to [something]"),
        signal: bool = False) -> Dict[str, list]:
    """Something-Something v2: labels and annotation JSONs, ``dataset.hdf5`` and
    ``flow_dataset.hdf5`` (one fewer flow frame). Returns split -> [(video id, label)]."""
    import h5py

    labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}
    noise = np.random.default_rng(0) if signal else None
    (root / "something-something-v2-labels.json").write_text(json.dumps(labels))
    rows: Dict[str, list] = {}
    with h5py.File(root / "dataset.hdf5", "w") as rgb, h5py.File(root / "flow_dataset.hdf5", "w") as flow:
        for split, count, name in (("train", train, "train"), ("test", val, "validation")):
            entries = [{"id": f"{split}{i}", "template": templates[i % len(templates)], "label": "x"} for i in range(count)]
            (root / f"something-something-v2-{name}.json").write_text(json.dumps(entries))
            rows[split] = [(e["id"], i % len(templates)) for i, e in enumerate(entries)]
            for e, (_, label) in zip(entries, rows[split]):
                value = signal_value(label, len(templates)) if signal else None
                _h5_frames(rgb, e["id"], frames, value, noise)
                _h5_frames(flow, e["id"], frames - 1, value, noise)
    return rows


def _h5_frames(handle, video: str, count: int, value: int | None = None, noise=None) -> None:
    import h5py

    data = handle.create_dataset(video, (count,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
    for k in range(count):
        data[k] = np.frombuffer(jpeg_bytes(frame_value(k) if value is None else value, noise=noise), dtype=np.uint8)


def flow_colour(k: int) -> tuple:
    """(R, G, B) of flow image k (the flow between frames k and k+1) in :func:`write_sthsth_flow`:
    horizontal flow in red, vertical in green, blue 0."""
    return (40 + 30 * k, 200 - 30 * k, 0)


def write_sthsth_flow(root: Path, train: int = 6, val: int = 2, frames: int = 6, size=(24, 32),
                      signal: bool = False) -> Dict[str, list]:
    """Something-Something v2 with ``flow_dataset.hdf5`` as Radevski et al. pack it (the file the
    MCR authors read): one dataset per video id whose n-th element is the JPEG of the n-th flow
    image, ``frames - 1`` per video (one per frame pair), stored as fixed-length byte strings
    (numpy ``S`` dtype, what ``np.asarray`` makes of a file's bytes); each image uniform
    :func:`flow_colour`. RGB frames and annotations as :func:`write_sthsth` (``signal`` there).
    Returns split -> [(video id, label)]."""
    import h5py
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = write_sthsth(root, train=train, val=val, frames=frames, signal=signal)
    images = []
    for k in range(frames - 1):
        buffer = io.BytesIO()
        Image.fromarray(np.full((*size, 3), flow_colour(k), dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
        images.append(buffer.getvalue())
    with h5py.File(root / "flow_dataset.hdf5", "w") as flow:
        for video, _ in rows["train"] + rows["test"]:
            flow.create_dataset(video, data=np.array(images, dtype=np.bytes_))
    return rows


def write_sthsth_features(root: Path, train: int = 8, val: int = 4, dims=(6, 5)) -> None:
    """Pre-extracted features: ``train_features.pt`` / ``val_features.pt``."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for name, n in (("train_features.pt", train), ("val_features.pt", val)):
        feats = {"video": torch.randn(n, dims[0], generator=gen), "flow": torch.randn(n, dims[1], generator=gen)}
        torch.save({"features": feats, "labels": torch.arange(n) % 2}, root / name)


def write_fixture(name: str, root: Path) -> Path:
    """Writes the tiny fixture of built-in dataset ``name`` under ``root``; returns the
    path to give as ``data.root``."""
    root.mkdir(parents=True, exist_ok=True)
    writers = {"cremad": write_cremad, "ave": write_ave, "ucf51": write_ucf51, "sthsth": write_sthsth}
    if name in writers:
        writers[name](root)
    elif name in ("mosi", "mosei"):
        write_affect(root / ("mosi_data.pkl" if name == "mosi" else "mosei_senti_data.pkl"))
    else:
        raise KeyError(f"no fixture for dataset {name!r}")
    return root
