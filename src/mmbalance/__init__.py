"""mmbalance: multimodal models that learn from every modality.

The reference implementation of the Multimodal Competition Regularizer (MCR, Kontras et
al.) and of the balancing methods it is compared against.
"""

import importlib
import importlib.util

from .errors import ConfigError, DataError, MMBalanceError, NonFiniteLossError
from .version import __version__

#: public name -> submodule that defines it, imported on first use (PEP 562): ``import
#: mmbalance`` and the command line's ``--help``/``--version`` do not pay torch's import
_LAZY = {"losses": None, "MCRLoss": "losses", "MIPD": "losses", "SupervisedContrastive": "losses", "CEB": "losses",
         "MLPEncoder": "models", "MultimodalModel": "models", "Batch": "types", "LossTerms": "types",
         "ModelOutput": "types"}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
        value = module if _LAZY[name] is None else getattr(module, name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)  # a subpackage: mb.models.Select
    else:
        raise AttributeError(f"module 'mmbalance' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def load_run(run_dir, checkpoint: str = "best", device="cpu"):
    """A trained ``mmbalance train`` run, loaded back from its folder (from any working
    directory, also after the folder was moved).

    Args:
        run_dir: the run folder (``--out`` of ``mmbalance train``).
        checkpoint: ``"best"`` (default: the best epoch on the monitored validation metric,
            the weights the test score came from) or ``"last"`` (``last.ckpt``).
        device: where the model goes.

    Returns:
        A :class:`~mmbalance.analysis.runs.TrainedRun`: ``.model`` (the
        :class:`MultimodalModel`), ``.method`` (``.method.predict(out)`` is the (B, C)
        prediction evaluation scores), ``.cfg`` (the configuration), ``.inputs`` (modality
        shapes and the train split's standardization), ``.prepare(arrays)`` (raw arrays ->
        the standardized tensors the model takes) and ``.predict(arrays)`` (fused and
        per-modality logits as numpy arrays).

    Example:
        >>> run = mb.load_run("runs/joint")
        >>> pred = run.predict({"x1": x1, "x2": x2})   # raw (N, 100) arrays
        >>> pred.logits.shape, pred.unimodal["x1"].shape  # (N, C), (N, C)
    """
    from .analysis.runs import load_run as _load_run  # needs the training stack; not loaded by `import mmbalance`
    return _load_run(run_dir, checkpoint=checkpoint, device=device)


__all__ = ["losses", "MCRLoss", "MIPD", "SupervisedContrastive", "CEB", "MLPEncoder", "MultimodalModel", "Batch", "LossTerms", "ModelOutput",
           "ConfigError", "DataError", "MMBalanceError", "NonFiniteLossError", "load_run", "__version__"]
