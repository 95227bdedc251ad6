"""Something-Something v2 (174 actions): RGB video and optical flow, as Radevski et al.'s
pipeline (which the MCR authors use) stores them.

Layout under ``data.root``::

    dataset.hdf5                              one dataset per video id: its frames, each a
    flow_dataset.hdf5                         JPEG-encoded byte array (flow frames as RGB JPEGs)
    something-something-v2-train.json         [{"id": "78687", "template": "Holding [something]
    something-something-v2-validation.json      next to [something]", ...}, ...]
    something-something-v2-labels.json        {"Holding something next to something": "41", ...}

Frames: 16 per clip (``data.num_frames``), one from each of 16 equal segments of the video
(a random one per segment in training, the middle one in evaluation), the same indices and
the same crop for video and flow (:class:`SthSthTransform`: scale jitter and a random crop, no
flip); ImageNet normalization. Flow has one image per frame pair (one fewer than RGB), stored
as RGB JPEGs; each video entry is a 1-D dataset of encoded images (variable-length uint8 or
fixed-length byte strings). The official validation set
is the test split (the labels of the official test set are not public); the validation
split is a seeded, class-stratified ``data.val_fraction`` of the training videos. A video
listed in the annotations but absent from an HDF5 file is an error naming both.

``data.features=true`` reads pre-extracted features instead: ``train_features.pt`` and
``val_features.pt`` under the root, each ``{"features": {"video": (N, ...), "flow": (N, ...),
...}, "labels": (N,)}`` (the authors' pre-feature files; link yours to these names).
``data.modalities`` picks modalities in both modes (default: video and flow).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .arrays import from_arrays
from .bundle import DataBundle
from .clips import carve_validation, require_root
from .vision import FrameTransform, center_crop, decode_image, normalize

FILES = {"video": "dataset.hdf5", "flow": "flow_dataset.hdf5"}
ANNOTATIONS = {"train": "something-something-v2-train.json", "test": "something-something-v2-validation.json"}
LABELS = "something-something-v2-labels.json"
FEATURES = {"train": "train_features.pt", "test": "val_features.pt"}
EXPECTED = "dataset.hdf5, flow_dataset.hdf5 and the something-something-v2-*.json annotations"
Items = List[Tuple[str, int]]


def segment_indices(length: int, num_frames: int, train: bool) -> List[int]:
    """One frame index per equal segment of a ``length``-frame video (the sthv2 sampler).

    Segment i spans ``round(s*i) .. round(s*(i+1))`` with ``s = (length - 1) / num_frames``;
    training draws uniformly inside it (torch RNG), evaluation takes its middle.
    """
    seg = float(length - 1) / num_frames
    out = []
    for i in range(num_frames):
        start, end = int(round(seg * i)), int(round(seg * (i + 1)))
        out.append(int(torch.randint(start, end + 1, (1,))) if train else (start + end) // 2)
    return out


class SthSthTransform(FrameTransform):
    """The authors' Something-Something frame pipeline (Radevski et al.'s ``VideoResize`` and
    ``VideoRandomCrop``, for video and flow alike): training resizes the short side to
    ``S * U(1.15, 1.43)`` and crops a random S x S box, the same for every frame of the clip;
    evaluation resizes the short side to S and takes the centre. No horizontal flip: several
    actions name a direction ("Pushing something from left to right" and its mirror are two
    classes). ImageNet mean/std. The authors' colour jitter of RGB frames is not applied.
    """

    def __call__(self, frames: List[torch.Tensor], num_frames: int) -> torch.Tensor:
        """k <= num_frames tensors (3, H, W) in [0, 1] -> (3, num_frames, S, S); missing frames stay 0."""
        S, out = self.size, torch.zeros(3, num_frames, self.size, self.size)
        if self.train and frames:
            short = int(S * float(torch.empty(1).uniform_(1.15, 1.43)))  # torch RNG: replayed per modality
            offsets = torch.rand(2)
        for t, frame in enumerate(frames[:num_frames]):
            if self.train:
                h, w = frame.shape[-2:]
                size = (short, max(short, int(short * w / h))) if h <= w else (max(short, int(short * h / w)), short)
                frame = torch.nn.functional.interpolate(frame[None], size=size, mode="bilinear", align_corners=False,
                                                        antialias=True)[0]
                top, left = (int(o * (n - S + 1)) for o, n in zip(offsets.tolist(), size))
                frame = frame[:, top:top + S, left:left + S]
            else:
                frame = center_crop(frame, S)
            out[:, t] = normalize(frame)
        return out


class SthSthFrames(Dataset):
    """Items ``({m: (3, T, S, S) for m in modalities}, label)`` read lazily from the HDF5 files.

    Each worker process opens its own file handles on first use.
    """

    def __init__(self, files: Dict[str, Path], items: Items, num_frames: int, transform: FrameTransform) -> None:
        self.files, self.items, self.num_frames, self.transform = dict(files), list(items), num_frames, transform
        self._handles: Dict[str, Any] = {}
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self):
        return {**self.__dict__, "_handles": {}, "_pid": None}

    def _handle(self, modality: str):
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if modality not in self._handles:
            self._handles[modality] = _open_h5(self.files[modality])
        return self._handles[modality]

    def _stored(self, modality: str, video: str):
        """The video's frames in ``modality``'s file: one encoded image per element (bytes,
        fixed-length ``S`` strings or variable-length uint8 arrays)."""
        stored = self._handle(modality)[video]
        if stored.ndim != 1 or len(stored) == 0:
            what = "no frames" if stored.ndim == 1 else f"an array of shape {tuple(stored.shape)} (decoded pixels?)"
            raise DataError(f"{self.files[modality]}: video {video!r} holds {what}; expected one encoded image "
                            "(JPEG bytes) per frame")
        return stored

    def __getitem__(self, i: int):
        video, label = self.items[i]
        frames = {m: self._stored(m, video) for m in self.files}
        # flow has one frame fewer than RGB (one per pair): indices come from the shorter, as the
        # authors sample them on the flow file and reuse them for the video
        length = min(len(f) for f in frames.values())
        indices = segment_indices(length, self.num_frames, self.transform.train)
        rng = torch.get_rng_state()
        out = {}
        for m, stored in frames.items():
            torch.set_rng_state(rng)  # the same crop for every modality (no flip: direction is in the label)
            images = [decode_image(stored[j], f"{self.files[m]}: video {video!r} frame {j}") for j in indices]
            out[m] = self.transform(images, self.num_frames)
        return out, torch.tensor(label, dtype=torch.long)


def load_sthsth(cfg: Any) -> DataBundle:
    """Builds the Something-Something v2 :class:`DataBundle` (frames or features)."""
    root = require_root(cfg, "sthsth", EXPECTED)
    if cfg.features:
        return _features_bundle(root, cfg)
    modalities = _modalities(cfg.modalities, tuple(FILES))
    labels = _read_json(root / LABELS, "the {template: index} label map", dict)
    train, test = (_annotations(root / ANNOTATIONS[s], labels) for s in ("train", "test"))
    files = {m: root / FILES[m] for m in modalities}
    _check_ids(files, {"train": train, "test": test})
    tr, va = carve_validation([label for _, label in train], cfg.val_fraction, cfg.seed)
    items = {"train": [train[i] for i in tr], "val": [train[i] for i in va], "test": test}
    T, S = cfg.num_frames or 16, cfg.image_size
    sets = {s: SthSthFrames(files, it, T, SthSthTransform(S, train=s == "train")) for s, it in items.items()}
    return DataBundle(sets["train"], sets["val"], sets["test"], {m: (3, T, S, S) for m in modalities},
                      len(labels), "classification", encoders={m: "resnet18_video" for m in modalities})


def _modalities(chosen: Optional[list], available) -> List[str]:
    names = [str(m) for m in (chosen or ["video", "flow"])]
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ConfigError(f"data.modalities: unknown {unknown[0]!r} for sthsth; valid: {', '.join(available)}")
    if len(set(names)) < 2:
        raise ConfigError(f"data.modalities needs at least 2 modalities, got {names}")
    return list(dict.fromkeys(names))


def _read_json(path: Path, what: str, kind: type):
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected {what})")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON (expected {what}): {exc}") from None
    if not isinstance(value, kind):
        raise DataError(f"{path} holds a {type(value).__name__}; expected {what}")
    return value


def _annotations(path: Path, labels: Dict[str, Any]) -> Items:
    items = []
    for entry in _read_json(path, "a list of {id, template} annotations", list):
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise DataError(f"{path}: entry {entry!r} lacks 'id' or 'template'")
        template = str(entry["template"]).replace("[", "").replace("]", "")
        if template not in labels:
            raise DataError(f"{path}: video {entry['id']!r} has template {template!r}, which {LABELS} does not list")
        items.append((str(entry["id"]), int(labels[template])))
    return items


def _open_h5(path: Path):
    try:
        import h5py
    except ImportError:
        raise DataError("reading Something-Something needs h5py, a dependency of mmbalance that is missing here: "
                        "pip install h5py") from None
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected an HDF5 file of JPEG-encoded frames per video id)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file ({exc})") from None


def _check_ids(files: Dict[str, Path], splits: Dict[str, Items]) -> None:
    for modality, path in files.items():
        with _open_h5(path) as handle:
            for split, items in splits.items():
                missing = [vid for vid, _ in items if vid not in handle]
                if missing:
                    raise DataError(f"{path}: no video {missing[0]!r} (listed in {ANNOTATIONS[split]}; "
                                    f"{len(missing)} missing in all)")


def _features_bundle(root: Path, cfg: Any) -> DataBundle:
    parts = {s: _read_features(root / name) for s, name in FEATURES.items()}
    available = tuple(parts["train"][0])
    modalities = _modalities(cfg.modalities, available)
    labels = {s: p[1] for s, p in parts.items()}
    tr, va = carve_validation(labels["train"], cfg.val_fraction, cfg.seed)
    split = np.full(len(labels["train"]), "train", dtype=object)
    split[va] = "val"
    arrays = {m: np.concatenate([parts["train"][0][m], parts["test"][0][m]]) for m in modalities}
    all_split = np.concatenate([split, np.full(len(labels["test"]), "test", dtype=object)]).astype(str)
    data = from_arrays(arrays, np.concatenate([labels["train"], labels["test"]]), all_split,
                       standardize=cfg.standardize, task="classification", source=str(root))
    return DataBundle.from_arrays(data)


def _read_features(path: Path):
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected {{'features': {{'video': ..., 'flow': ...}}, 'labels': ...}})")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file
        raise DataError(f"{path} is not a readable torch file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("features"), dict) or "labels" not in blob:
        raise DataError(f"{path}: expected {{'features': {{modality: (N, ...)}}, 'labels': (N,)}}")
    labels = np.asarray(torch.as_tensor(blob["labels"]).reshape(-1).numpy())
    feats = {str(m): torch.as_tensor(v).float().numpy() for m, v in blob["features"].items()}
    bad = [m for m, v in feats.items() if len(v) != len(labels)]
    if bad:
        raise DataError(f"{path}: features {bad[0]!r} have {len(feats[bad[0]])} rows but 'labels' has {len(labels)}")
    return feats, labels
