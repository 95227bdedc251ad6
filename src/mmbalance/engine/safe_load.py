"""Checkpoints are loaded without running code, whoever wrote them.

A run folder from a colleague, a paper's release or a download is untrusted input, and a
``.ckpt`` file is a pickle: loaded with ``torch.load(weights_only=False)`` it can run any
command. Every checkpoint the library opens goes through :func:`load_checkpoint`:
``mb.load_run``, ``mmbalance predict`` and ``diagnose``, a pipeline's stages, the scoring of
the best checkpoint after training, and Lightning's ``--resume`` (through
:class:`~mmbalance.training.checkpoint_io.AtomicCheckpointIO`). It uses PyTorch's
weights-only unpickler, which builds tensors, plain containers and scalars and nothing else.

The library's own checkpoints need no global beyond that allowlist: the resume state that
``BalanceModule.on_save_checkpoint`` adds (RNG streams, the sampler's position) is stored as
tensors, ints and tuples, never as NumPy objects. :data:`CHECKPOINT_GLOBALS` is where a
global would be registered if a future checkpoint needed one, explicitly and by name;
``tests/engine/test_safe_load.py`` loads every registered method's checkpoints (best,
last, mid-epoch) with exactly this allowlist.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import IO, Any, Dict, Optional, Tuple, Union

import torch

from ..errors import DataError

#: globals beyond PyTorch's weights-only defaults that the library's checkpoints need: none
#: (see the module docstring). Entries are the objects themselves, as
#: ``torch.serialization.safe_globals`` takes them.
CHECKPOINT_GLOBALS: Tuple[Any, ...] = ()

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # PyTorch's wording: "unsupported GLOBAL posix.system whose..."


def refused_global(exc: BaseException) -> Optional[str]:
    """The global that PyTorch's weights-only unpickler refused, from its error message
    (``os.system``); None when the error is about something else."""
    match = _GLOBAL.search(str(exc))
    return match.group(1) if match else None


def load_checkpoint(path: Union[str, Path, IO[bytes]], map_location: Any = "cpu") -> Dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and :data:`CHECKPOINT_GLOBALS`.

    Raises:
        DataError: one line naming the file and the global it asked for, when the file asks
            to build anything but tensors, containers and scalars (a crafted or foreign
            checkpoint); the command such a file carries never runs.
    """
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        name = refused_global(exc)
        what = f"wants to load {name}, which an mmbalance checkpoint never holds" if name else (
            f"is not a weights-only checkpoint ({_reason(exc)})")
        raise DataError(f"checkpoint {path} {what}; refused without running it (checkpoints load "
                        "weights-only: tensors, containers and scalars)") from None


def _reason(exc: BaseException) -> str:
    """The line of PyTorch's multi-line message that says what was refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))]
    return (told or lines or [type(exc).__name__])[0]

