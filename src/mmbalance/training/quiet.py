"""Quieter Lightning for commands that run many trainings."""

from __future__ import annotations

import logging

import lightning  # noqa: F401  (configures its loggers on import; quieten them after)


def quiet_lightning() -> None:
    """Keeps Lightning's per-run banners out of multi-run output."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
