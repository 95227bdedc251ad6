"""``trainer.*`` values checked before Lightning sees them: one ConfigError naming the key
and the valid values, instead of a traceback from deep inside the Trainer."""

from __future__ import annotations

import typing

import torch

from ..config import TrainerConfig
from ..errors import ConfigError, did_you_mean
from .loggers import check_logger


def _precisions() -> list:
    from lightning.fabric.connector import _PRECISION_INPUT_STR
    return list(typing.get_args(_PRECISION_INPUT_STR)) + ["16", "bf16", "32", "64"]


def _strategies() -> list:
    from lightning.pytorch.strategies import StrategyRegistry
    return ["auto", *StrategyRegistry.available_strategies()]


def _available(accelerator: str) -> int:
    """How many devices of ``accelerator`` this machine has (CPU: any number of processes)."""
    if accelerator in ("gpu", "cuda"):
        return torch.cuda.device_count()
    if accelerator == "mps":
        return int(torch.backends.mps.is_available())
    if accelerator == "tpu":
        from lightning.pytorch.accelerators import XLAAccelerator
        return XLAAccelerator.auto_device_count() if XLAAccelerator.is_available() else 0
    return 1 << 30


def check_trainer(t: TrainerConfig) -> None:
    """Raises ConfigError for a precision, strategy, accelerator or logger Lightning does not
    know, an accelerator (or device count) this machine lacks, or a logger whose package is
    not installed."""
    precisions = _precisions()
    if str(t.precision) not in precisions:
        raise ConfigError(f"trainer.precision {t.precision!r} is unknown; {did_you_mean(str(t.precision), precisions)}"
                          f"valid: {', '.join(precisions)}")
    strategies = _strategies()
    if t.strategy not in strategies:
        raise ConfigError(f"trainer.strategy {t.strategy!r} is unknown; {did_you_mean(str(t.strategy), strategies)}"
                          f"valid: {', '.join(strategies)}")
    accelerators = ["auto", "cpu", "gpu", "cuda", "mps", "tpu"]
    if t.accelerator not in accelerators:
        raise ConfigError(f"trainer.accelerator {t.accelerator!r} is unknown; {did_you_mean(str(t.accelerator), accelerators)}"
                          f"valid: {', '.join(accelerators)}")
    check_logger(t.logger)
    if t.accelerator != "auto":
        have = _available(t.accelerator)
        if have == 0:
            raise ConfigError(f"trainer.accelerator={t.accelerator} but this machine has no {t.accelerator} device; "
                              "use trainer.accelerator=cpu (or auto)")
        if t.devices > have:
            raise ConfigError(f"trainer.devices={t.devices} but this machine has {have} {t.accelerator} device(s)")
