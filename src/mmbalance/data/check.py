"""One fast pass over every file a dataset reads lazily, item by item, before training.

The audio-visual datasets (AVE, CREMA-D) read a spectrogram pickle or WAV file and frame
images per item, and Something-Something reads each video's frames from its HDF5 files per
item: without this pass, a broken file in the test split stops a run only when it is scored,
after all the training. :func:`check_bundle` opens every such file of every split once:

- a pickled spectrogram (``.pkl``) is unpickled (there is no header to read): a finite
  numeric array of the shape of the first training clip's;
- a WAV file: its RIFF header and chunk table (``scipy.io.wavfile`` with ``mmap=True``, so
  the samples are mapped, not read): a readable WAV holding at least one sample;
- a frame image: its header through Pillow (format and size), without decoding the pixels;
- a Something-Something video: present in each HDF5 file as a 1-D dataset of encoded images
  (an array of decoded pixels is reported as such) with at least one frame, and the header of
  its first frame readable.

UCF-51's clips are in memory (its one pickle is read whole while loading): their audio and
frames are checked for a numeric type. MOSI/MOSEI, Sth-Sth features and ``.npz``/``.h5``
arrays are read and checked whole while loading: nothing is left to check.

A file that passed is remembered by (path, size, mtime_ns, what was expected) in a JSON file
under ``$MMBALANCE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/mmbalance`` or
``~/.cache/mmbalance``), ``data-check/<dataset>-<hash of data.root>.json``, so a rerun reads
no file again; a changed size or mtime checks the file again. ``data.root`` may be read-only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..errors import DataError

log = logging.getLogger("mmbalance.data")

CACHE_ENV = "MMBALANCE_CACHE_DIR"
CACHE_VERSION = 1
#: seconds between two progress lines of a long pass
PROGRESS_EVERY = 5.0


@dataclass(frozen=True)
class Item:
    """One thing read per item: a file, or a member of one (``member``: an HDF5 video id,
    a UCF-51 clip name).

    Attributes:
        path: the file (its size and mtime key the cache).
        kind: ``spectrogram``, ``wav``, ``image``, ``h5-video`` or ``memory``.
        expect: what it must hold (a spectrogram's shape), part of the cache key.
        value: an in-memory entry (``memory`` items), never cached.
    """

    path: Path
    kind: str
    expect: str = ""
    member: str = ""
    value: Any = None

    @property
    def key(self) -> str:
        path = os.path.abspath(self.path)  # no system call, unlike resolve()
        return f"{path}::{self.member}" if self.member else path


# ------------------------------------------------------------------- what to check

def items_of(bundle: Any) -> List[Item]:
    """The lazily read files (and in-memory entries) of every split of ``bundle``, once each."""
    from .clips import AudioVisualDataset
    from .sthsth import SthSthFrames

    seen: Dict[str, Item] = {}
    for split in ("train", "val", "test"):
        dataset = getattr(bundle, split, None)
        if isinstance(dataset, AudioVisualDataset):
            found = _clip_items(dataset)
        elif isinstance(dataset, SthSthFrames):
            found = (Item(Path(path), "h5-video", member=video)
                     for video, _ in dataset.items for path in dataset.files.values())
        else:
            found = ()
        for item in found:
            seen.setdefault(item.key, item)
    return list(seen.values())


def _clip_items(dataset: Any) -> Iterable[Item]:
    shape = "x".join(map(str, dataset.audio_shape))
    for clip in dataset.clips:
        if isinstance(clip.audio, (str, Path)):
            path = Path(clip.audio)
            yield Item(path, "spectrogram", shape) if path.suffix == ".pkl" else Item(path, "wav")
        else:
            yield Item(Path("<memory>"), "memory", member=f"clip {clip.key}", value=(clip.audio, clip.frames))
        if not isinstance(clip.frames, np.ndarray):
            yield from (Item(Path(p), "image") for p in clip.frames)


# ------------------------------------------------------------------- checking one

def check_item(item: Item, handles: Dict[Path, Any]) -> None:
    """Raises DataError (one line naming the file) unless ``item`` holds what it should.

    Args:
        handles: open HDF5 files by path, shared by the pass (closed by the caller).
    """
    if item.kind == "spectrogram":
        _check_spectrogram(item.path, tuple(int(n) for n in item.expect.split("x")))
    elif item.kind == "wav":
        _check_wav(item.path)
    elif item.kind == "image":
        _check_image(item.path)
    elif item.kind == "h5-video":
        _check_h5_video(item.path, item.member, handles)
    elif item.kind == "memory":
        _check_entry(item.member, *item.value)
    else:
        raise ValueError(f"unknown check kind {item.kind!r}")


def _check_spectrogram(path: Path, shape: Tuple[int, ...]) -> None:
    from .audio import load_pickled_array

    array = load_pickled_array(path, "spectrogram", ndim=len(shape))
    if array.shape != shape:
        raise DataError(f"spectrogram file {path} holds an array of shape {array.shape}; expected {shape} "
                        "like the first training clip")


def _check_wav(path: Path) -> None:
    import warnings

    from scipy.io import wavfile

    from .audio import read_wav

    if not path.is_file():
        raise DataError(f"audio file {path} does not exist (expected a WAV file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            _, data = wavfile.read(path, mmap=True)  # the header and chunk table; samples mapped
        empty = data.size == 0
        del data
    except Exception:  # mmap refuses some formats (24-bit): the reader's own full read decides
        read_wav(path)
        return
    if empty:
        raise DataError(f"audio file {path} holds no samples (expected at least one)")


def _check_image(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # parses the header only
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"frame {path} does not exist (expected a JPEG image)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"frame {path} is not a readable image ({exc})") from None
    if width < 1 or height < 1:
        raise DataError(f"frame {path} is {width} x {height} pixels; expected at least 1 x 1")


def _check_h5_video(path: Path, video: str, handles: Dict[Path, Any]) -> None:
    from PIL import Image, UnidentifiedImageError

    from .sthsth import _open_h5

    if path not in handles:
        handles[path] = _open_h5(path)
    if video not in handles[path]:
        raise DataError(f"{path}: no video {video!r}")
    stored = handles[path][video]
    shape = getattr(stored, "shape", None)
    if shape is None:
        raise DataError(f"{path}: video {video!r} is an HDF5 group, not a dataset; expected a 1-D dataset of one "
                        "encoded image (JPEG bytes) per frame")
    if len(shape) != 1:  # the reader's wording (sthsth.SthSthFrames._stored)
        raise DataError(f"{path}: video {video!r} holds an array of shape {tuple(shape)} (decoded pixels?); expected "
                        "one encoded image (JPEG bytes) per frame")
    if shape[0] == 0:
        raise DataError(f"{path}: video {video!r} has no frames")
    try:
        with Image.open(io.BytesIO(bytes(stored[0]))):
            pass  # opening parses the header; the pixels are not decoded
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: video {video!r} frame 0 is not a readable encoded image ({exc})") from None


def _check_entry(name: str, audio: Any, frames: Any) -> None:
    audio, frames = np.asarray(audio), np.asarray(frames)
    for what, array in (("audio", audio), ("frames", frames)):
        if array.dtype.kind not in "biuf":
            raise DataError(f"{name}: {what} of dtype {array.dtype}; expected numbers")
    if not np.isfinite(audio).all():
        raise DataError(f"{name}: audio holds NaN or Inf values")


# ------------------------------------------------------------------- the cache

def cache_dir() -> Path:
    """``$MMBALANCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmbalance``, else ``~/.cache/mmbalance``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mmbalance"


def cache_file(name: str, root: Any) -> Path:
    """Where the checked files of dataset ``name`` under ``root`` are remembered."""
    where = str(Path(str(root)).expanduser().resolve()) if root else ""
    return cache_dir() / "data-check" / f"{name}-{hashlib.sha1(where.encode()).hexdigest()[:16]}.json"


def _stamp(item: Item) -> Optional[List[Any]]:
    try:
        st = item.path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, item.kind, item.expect]


def _read_cache(path: Path) -> Dict[str, list]:
    try:
        tree = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    ok = tree.get("ok") if isinstance(tree, dict) and tree.get("version") == CACHE_VERSION else None
    return ok if isinstance(ok, dict) else {}


def _write_cache(path: Path, passed: Dict[str, list], failed: List[str]) -> None:
    """Adds ``passed`` to the file (re-read first: another run may have added entries) and
    drops ``failed``; written whole then renamed. A cache that cannot be written only warns."""
    try:
        ok = _read_cache(path)
        ok.update(passed)
        for key in failed:
            ok.pop(key, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "ok": ok}))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("data check: could not write its cache %s (%s); set %s to a writable folder", path, exc,
                    CACHE_ENV)


# ------------------------------------------------------------------- the pass

@dataclass
class CheckReport:
    """What :func:`check_bundle` did: ``items`` checked in all (``what`` says of which kind,
    e.g. ``"60 files"``), ``cached`` of them skipped because the cache knew them, in ``seconds``."""

    items: int
    cached: int
    seconds: float
    what: str = ""

    def summary(self, name: str) -> str:
        if not self.items:
            return f"{name}: no file is read per item (everything was read and checked while loading)"
        return (f"{name}: {self.what} OK in {self.seconds:.2f} s ({self.items - self.cached} read, "
                f"{self.cached} known from the cache)")


NOUNS = {"spectrogram": "files", "wav": "files", "image": "files", "h5-video": "videos in HDF5 files",
         "memory": "in-memory clips"}


def check_bundle(bundle: Any, name: str, root: Any = None,
                 progress: Optional[Callable[[str], None]] = None) -> CheckReport:
    """Checks every lazily read file of every split of ``bundle`` (see the module docstring).

    Args:
        name: the dataset's name (for the cache file and messages).
        root: ``data.root`` (the cache file is per root).
        progress: called with a line now and then during a long pass.

    Raises:
        DataError: one line: the bad file's own message, or with several bad files
            ``"N bad data files; first: ..."``.
    """
    began = time.perf_counter()
    items = items_of(bundle)
    if not items:
        return CheckReport(0, 0, time.perf_counter() - began)
    cache_path = cache_file(name, root)
    known = _read_cache(cache_path)
    passed: Dict[str, list] = {}
    bad: List[Tuple[str, str]] = []
    cached, last = 0, time.perf_counter()
    handles: Dict[Path, Any] = {}
    try:
        for i, item in enumerate(items):
            stamp = None if item.kind == "memory" else _stamp(item)
            if stamp is not None and known.get(item.key) == stamp:
                cached += 1
                continue
            try:
                check_item(item, handles)
            except DataError as exc:
                bad.append((item.key, str(exc).splitlines()[0]))
                continue
            except Exception as exc:  # a reader library's own failure on a strange file
                bad.append((item.key, f"{item.key} could not be checked ({type(exc).__name__}: {exc})"))
                continue
            if stamp is not None:
                passed[item.key] = stamp
            if progress is not None and time.perf_counter() - last > PROGRESS_EVERY:
                last = time.perf_counter()
                progress(f"checking {name} data files: {i + 1}/{len(items)}")
    finally:
        for handle in handles.values():
            handle.close()
    if passed or (bad and any(k in known for k, _ in bad)):
        _write_cache(cache_path, passed, [k for k, _ in bad])
    if bad:
        first = bad[0][1]
        raise DataError(first if len(bad) == 1 else f"{len(bad)} bad data files; first: {first}")
    counts: Dict[str, int] = {}
    for item in items:
        counts[NOUNS[item.kind]] = counts.get(NOUNS[item.kind], 0) + 1
    what = ", ".join(f"{n} {noun}" for noun, n in counts.items())
    return CheckReport(len(items), cached, time.perf_counter() - began, what)
