"""Hyperparameters declared with their search range, in the method's dataclass:

    alpha: float = hparam(0.8, search=log_uniform(0.05, 2.0))

The range is metadata of the dataclass field; :meth:`Method.search_space` turns it into
Optuna calls, so this module (and methods/) imports no Optuna.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

SEARCH = "search"  # the key of a field's metadata that holds its Search


@dataclass(frozen=True)
class Search:
    """A range to search: ``kind`` is float, int or choice."""

    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    choices: Tuple[Any, ...] = ()

    def suggest(self, trial: Any, key: str) -> Any:
        """The Optuna ``trial``'s value for ``key`` in this range."""
        if self.kind == "float":
            return trial.suggest_float(key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(key, self.low, self.high, log=self.log)
        return trial.suggest_categorical(key, list(self.choices))


def uniform(low: float, high: float) -> Search:
    return Search("float", low, high)


def log_uniform(low: float, high: float) -> Search:
    return Search("float", low, high, log=True)


def int_range(low: int, high: int, log: bool = False) -> Search:
    return Search("int", low, high, log=log)


def choice(options: Sequence[Any]) -> Search:
    return Search("choice", choices=tuple(options))


def hparam(default: Any, search: Optional[Search] = None) -> Any:
    """A dataclass field with ``default`` and, when searched by ``mmbalance tune``, its range."""
    metadata = {SEARCH: search} if search is not None else {}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def searched(hyperparameters: type) -> Dict[str, Search]:
    """Field name -> range of every searched field of a ``Hyperparameters`` dataclass."""
    return {f.name: f.metadata[SEARCH] for f in dataclasses.fields(hyperparameters) if SEARCH in f.metadata}
