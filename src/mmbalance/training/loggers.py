"""``trainer.logger``: where a run's scalars go, through Lightning's own loggers.

``csv`` (default) writes ``DIR/logs/version_N/metrics.csv``. ``tensorboard`` adds
``DIR/tensorboard/version_N/events.out.tfevents.*`` (``pip install 'mmbalance[loggers]'``),
``wandb`` a Weights & Biases run (offline, under ``DIR/wandb``, when the service cannot be
reached or no API key is set; ``WANDB_MODE`` decides when given), ``mlflow`` an MLflow run
(``MLFLOW_TRACKING_URI``, else a file store in ``DIR/mlruns``). The CSV file is written in
every case: ``mmbalance diagnose`` reads the gradient norms from it. The names logged are
listed in docs/logging.md.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import socket
import warnings
from typing import Any, Dict, List

from ..engine import RunDir
from ..errors import ConfigError

#: trainer.logger value -> (the package it needs, how to install it)
LOGGERS: Dict[str, tuple] = {
    "csv": (None, None),
    "tensorboard": ("tensorboard", "pip install 'mmbalance[loggers]'"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
}
WANDB_HOST = "api.wandb.ai"


def check_logger(name: str) -> None:
    """Raises ConfigError for an unknown ``trainer.logger`` or one whose package is missing."""
    if name not in LOGGERS:
        raise ConfigError(f"trainer.logger {name!r} is unknown; valid: {', '.join(LOGGERS)}")
    package, install = LOGGERS[name]
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"trainer.logger={name} needs the {package} package: {install}")


def wandb_offline(host: str = WANDB_HOST, timeout: float = 2.0) -> bool:
    """True unless the W&B service answers and an API key is known (``WANDB_API_KEY`` or
    ``~/.netrc``); ``WANDB_MODE`` (online/offline/disabled) overrides the probe."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode != "online"
    key = bool(os.environ.get("WANDB_API_KEY"))
    if not key:
        try:
            key = netrc.netrc().authenticators(host) is not None
        except (OSError, netrc.NetrcParseError):
            key = False
    if not key:
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return True
    return False


def build_loggers(name: str, run_dir: str, run_name: str, config: Dict[str, Any]) -> List[Any]:
    """The CSV logger (``run_dir/logs``), plus the one ``name`` asks for, which also gets
    the resolved configuration as hyperparameters."""
    from lightning.pytorch.loggers import CSVLogger

    check_logger(name)
    loggers: List[Any] = [CSVLogger(save_dir=run_dir, name=RunDir.LOGS)]
    if name == "csv":
        return loggers
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger
        extra = TensorBoardLogger(save_dir=run_dir, name="tensorboard", default_hp_metric=False)
    elif name == "wandb":
        from lightning.pytorch.loggers import WandbLogger
        offline = wandb_offline()
        if offline:
            warnings.warn(f"wandb runs offline in {run_dir}/wandb; upload later with `wandb sync`", stacklevel=2)
        extra = WandbLogger(name=run_name, save_dir=run_dir, offline=offline,
                            project=os.environ.get("WANDB_PROJECT", "mmbalance"))
    else:
        from lightning.pytorch.loggers import MLFlowLogger
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"file:{os.path.join(run_dir, 'mlruns')}"
        extra = MLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "mmbalance"),
                             run_name=run_name, tracking_uri=uri)
    extra.log_hyperparams(config)
    return loggers + [extra]
