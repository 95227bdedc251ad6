"""The dataset tests run tiny tensors: one intra-op thread is faster than two and immune to
OpenMP threads spinning against other processes on a busy machine. The data check's cache
goes to a temporary folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(autouse=True)
def _data_check_cache(tmp_path_factory, monkeypatch):
    """``train`` checks the data files before its first epoch and remembers the files that
    passed: in a fresh folder per test, never in the user's ~/.cache."""
    monkeypatch.setenv("MMBALANCE_CACHE_DIR", str(tmp_path_factory.mktemp("mmbalance-cache")))
