"""Quieter Lightning: no adverts, banners or per-checkpoint chatter in a run's output.

:func:`drop_lightning_chatter` removes, for every run (``train`` calls it), the lines that
say nothing about this run or repeat at every stage: the ``litlogger`` tip, "GPU/TPU/HPU
available", "Restoring states from the checkpoint path", "Loaded model weights from the
checkpoint", "`weights_only` was not set" and "`Trainer.fit` stopped: `max_epochs=N`
reached". :data:`IGNORED_WARNINGS` are the warnings ``train`` silences while it runs
Lightning. Other Lightning messages and warnings still show. :func:`quiet_lightning` goes
further, for commands that run many trainings: only errors.
"""

from __future__ import annotations

import logging
import re

import lightning  # noqa: F401  (configures its loggers on import; quieten them after)

#: what a Lightning log record must not say to be shown
CHATTER = re.compile(
    r"💡 Tip:|litlogger|(GPU|TPU|HPU) available:|Restoring states from the checkpoint|"
    r"Loaded model weights from the checkpoint|Restored all states from the checkpoint|"
    r"`weights_only` was not set|`Trainer\.(fit|validate|test)` stopped: `max_(epochs|steps)=")

#: regular expressions of warning messages ``train`` ignores: data loaders without worker
#: processes, fewer batches than ``trainer.log_every_n_steps`` (small data), a checkpoint
#: folder that already holds files (resume), and torch-internal deprecations
IGNORED_WARNINGS = (r".*(does not have many workers|log_every_n_steps|ckpt_path|LeafSpec|not resumable"
                    r"|exists and is not empty).*")

#: the loggers Lightning writes those records through, and their parents (which hold the
#: console handlers it installs on import)
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
            "lightning.pytorch.trainer.connectors.checkpoint_connector", "lightning.pytorch", "lightning.fabric",
            "lightning", "pytorch_lightning", "pytorch_lightning.utilities.rank_zero")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not CHATTER.search(record.getMessage())
        except Exception:  # a record whose message cannot be formatted: let logging report it
            return True


_FILTER = _DropChatter()


def drop_lightning_chatter() -> None:
    """Installs the filter on Lightning's loggers and on their handlers (idempotent).

    A logger's filter sees the records that logger creates; a handler's sees every record
    that reaches it, so both are set."""
    for name in _LOGGERS:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
        for handler in log.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


def quiet_lightning() -> None:
    """Keeps Lightning's per-run banners out of multi-run output: only errors show."""
    drop_lightning_chatter()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
