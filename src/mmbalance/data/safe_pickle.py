"""Unpickling the datasets' ``.pkl`` files without letting them run code.

AVE spectrograms, the UCF-51 table and the MultiBench MOSI/MOSEI tables are distributed as
pickles, and ``pickle.load`` calls whatever callable a pickle names (``os.system``,
``builtins.eval``, ...). :func:`load` and :func:`loads` resolve only the globals that numpy
arrays, numpy scalars and builtin containers need; any other global is a :class:`DataError`
naming the file and the global, raised before anything is called.

What numpy 2.4 writes at protocols 0-5 (read back with a recording ``find_class``), for
float16/32/64, int64, uint8, bool, str, bytes, object, datetime, structured, Fortran-order
and non-contiguous arrays and for numpy scalars: ``numpy._core.multiarray._reconstruct``,
``numpy.ndarray`` and ``numpy.dtype`` (protocols 0-4), ``numpy._core.numeric._frombuffer``
(protocol 5), ``numpy._core.multiarray.scalar`` (scalars), ``_codecs.encode`` (bytes at
protocols 0-2), and ``numpy._core._internal._convert_to_stringdtype_kwargs`` (StringDType).
No ``numpy.dtypes.*`` class appears (a dtype pickles as ``numpy.dtype``). numpy 1.x writes
the same names under ``numpy.core``; Python 2 writes ``__builtin__`` for ``builtins``.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
from pathlib import Path
from typing import IO, Any, Union

from ..errors import DataError

#: the numpy functions array and scalar pickles call, below ``numpy._core`` (``numpy.core``
#: in numpy 1.x and in the files it wrote)
NUMPY_CORE = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"),
              ("_internal", "_convert_to_stringdtype_kwargs")}
#: other globals a dataset pickle may name: numpy's array and dtype types, builtin containers
#: and scalars (``int`` and ``str`` are where Python 2's ``long`` and ``unicode`` map to), and
#: ``_codecs.encode`` (how protocols 0-2 spell bytes)
ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict"),
           *(("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "complex", "bytes",
                                             "bytearray", "int", "str"))}
WHY = "which is not allowed in a dataset pickle (only numpy arrays and builtin containers and scalars)"


class UnsafePickleError(DataError):
    """A pickle names a global outside :data:`ALLOWED` (one line: the file and the global)."""


def _canonical(module: str, name: str):
    """Python 2 names mapped as ``pickle`` maps them (``__builtin__`` -> ``builtins``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _numpy_core() -> str:
    import numpy
    return "numpy._core" if int(numpy.__version__.split(".")[0]) >= 2 else "numpy.core"


class _Restricted(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str, what: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source, self.what = source, what

    def find_class(self, module: str, name: str):
        canonical = _canonical(module, name)
        package, _, sub = canonical[0].partition(".")
        core = sub.split(".", 1)
        if package == "numpy" and core[0] in ("core", "_core") and len(core) == 2 and (core[1], name) in NUMPY_CORE:
            return getattr(importlib.import_module(f"{_numpy_core()}.{core[1]}"), name)
        if canonical in ALLOWED:
            return getattr(importlib.import_module(canonical[0]), canonical[1])
        raise UnsafePickleError(f"{self.what} {self.source} wants to load {module}.{name}, {WHY}")

    def persistent_load(self, pid: Any):
        raise UnsafePickleError(f"{self.what} {self.source} holds a persistent reference, {WHY}")


def load(source: Union[str, Path, IO[bytes]], what: str = "data file", **kwargs: Any) -> Any:
    """Unpickles the file at ``source`` (a path or a binary file object) with only numpy
    arrays, numpy scalars and builtin containers and scalars allowed.

    Args:
        what: how the error names the file (``"data file"``, ``"spectrogram file"``).
        kwargs: ``encoding``/``errors`` as for ``pickle.load`` (``encoding="latin1"`` for
            Python 2 pickles of numpy arrays).

    Raises:
        UnsafePickleError (a DataError): the pickle names any other global. Other failures
            (a truncated or corrupt file) raise what ``pickle.load`` raises, for the reader to
            word.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return _Restricted(handle, str(source), what, **kwargs).load()
    return _Restricted(source, str(getattr(source, "name", "<stream>")), what, **kwargs).load()


def loads(data: bytes, source: Union[str, Path] = "<bytes>", what: str = "data file", **kwargs: Any) -> Any:
    """:func:`load` of the bytes ``data``, read from ``source`` (named in errors)."""
    return _Restricted(io.BytesIO(data), str(source), what, **kwargs).load()
