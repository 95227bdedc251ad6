"""Checkpoint files written atomically (a kill during a write leaves the previous good file)
and read weights-only (a crafted checkpoint cannot run code, ``--resume`` included)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..engine.safe_load import load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file in the same folder, flushes it to disk, then renames it
    over the target (``os.replace`` is atomic on POSIX and Windows). Loads (``--resume``,
    scoring the best checkpoint) go through :func:`~mmbalance.engine.safe_load.load_checkpoint`
    whatever ``weights_only`` Lightning passes: no checkpoint is trusted to run code."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        if not Path(path).exists():
            raise FileNotFoundError(f"checkpoint file {path} does not exist")
        return load_checkpoint(path, map_location=map_location)
