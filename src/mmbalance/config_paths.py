"""Local paths in a run configuration made absolute, so that a saved ``config.yaml`` or a
printed resume command works from any working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def resolve_data_spec(spec: str) -> str:
    """``spec`` with a file path made absolute (``synthetic`` and dataset names unchanged), so
    that a run's saved configuration works from any working directory."""
    path = Path(spec).expanduser()
    looks_like_file = path.suffix in (".npz", ".h5", ".hdf5") or path.is_file()
    return str(path.resolve()) if looks_like_file and spec != "synthetic" else spec


#: dotted keys whose values are local paths (``model.pretrained`` may be ``audio=DIR,video=DIR``)
PATH_KEYS = ("data.root", "data.spectrogram_dir", "model.pretrained", "trainer.stage_cache")


def absolute_path_value(key: str, value: Any) -> Any:
    """``value`` of the dotted ``key`` with relative local paths made absolute (against the
    working directory), so a saved config or a printed resume command works from anywhere.
    Values of other keys, non-strings, and names that are not local paths (a Hugging Face
    model id) are returned unchanged; ``trainer.stage_cache`` is a folder to be made, so it is
    resolved even when it does not exist yet."""
    if key not in PATH_KEYS or not isinstance(value, str) or not value:
        return value
    if key == "model.pretrained" and "=" in value:
        parts = (part.partition("=") for part in value.split(","))
        return ",".join(f"{m}={absolute_path_value(key, p)}" for m, _, p in parts)
    path = Path(value).expanduser()
    if path.is_absolute() or not (key == "trainer.stage_cache" or path.exists()):
        return str(path) if path.is_absolute() else value
    return str(path.resolve())
