"""results.csv: atomic appends, and what a kill at any moment leaves behind."""

from __future__ import annotations

import os

import pytest

from mmbalance.bench import results as results_mod
from mmbalance.bench.results import ResultsFile
from mmbalance.errors import DataError

COLS = ("run_id", "value", "note")


def test_append_then_read_back_every_row(tmp_path):
    f = ResultsFile(tmp_path / "r.csv", COLS)
    f.append({"run_id": "a", "value": 0.5, "note": 'has "quotes", commas\nand a newline'})
    f.append({"run_id": "b", "value": 1})
    rows = f.rows()
    assert [r["run_id"] for r in rows] == ["a", "b"]
    assert rows[0]["note"] == 'has "quotes", commas\nand a newline'
    assert rows[1]["value"] == "1" and rows[1]["note"] == ""
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "run_id,value,note"


def test_kill_between_temp_write_and_rename_keeps_the_old_file(tmp_path, monkeypatch):
    """Simulates a kill at the worst moment of an append: the new content is fully written
    to the temporary file but the rename never happens."""
    path = tmp_path / "r.csv"
    f = ResultsFile(path, COLS)
    f.append({"run_id": "a", "value": 1})
    before = path.read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(results_mod.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        f.append({"run_id": "b", "value": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before  # no half row, the finished row kept
    assert [r["run_id"] for r in ResultsFile(path, COLS).rows()] == ["a"]
    ResultsFile(path, COLS).append({"run_id": "c", "value": 3})  # the leftover temp file is harmless
    assert [r["run_id"] for r in ResultsFile(path, COLS).rows()] == ["a", "c"]


def test_every_intermediate_state_of_an_append_is_a_whole_file(tmp_path, monkeypatch):
    """Records what the file holds at each OS call of an append: it is always either the old
    or the new complete file."""
    path = tmp_path / "r.csv"
    f = ResultsFile(path, COLS)
    f.append({"run_id": "a", "value": 1})
    old = path.read_text()
    seen = []
    real_replace, real_fsync = os.replace, os.fsync

    def spy_replace(src, dst):
        seen.append(path.read_text())
        real_replace(src, dst)
        seen.append(path.read_text())

    def spy_fsync(fd):
        seen.append(path.read_text())
        real_fsync(fd)

    monkeypatch.setattr(results_mod.os, "replace", spy_replace)
    monkeypatch.setattr(results_mod.os, "fsync", spy_fsync)
    f.append({"run_id": "b", "value": 2})
    new = path.read_text()
    assert new == old + "b,2,\n"
    assert seen and all(s in (old, new) for s in seen)


def test_refuses_a_file_with_other_columns(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="columns"):
        ResultsFile(path, COLS).rows()
    with pytest.raises(DataError):
        ResultsFile(path, COLS).append({"run_id": "a"})
    assert path.read_text() == "x,y\n1,2\n"


def test_unique_append_skips_a_row_recorded_meanwhile(tmp_path):
    f = ResultsFile(tmp_path / "r.csv", COLS)
    assert f.append({"run_id": "a", "value": 1}, unique="run_id")
    assert not f.append({"run_id": "a", "value": 2}, unique="run_id")
    assert [r["value"] for r in f.rows()] == ["1"]


def test_unknown_column_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        ResultsFile(tmp_path / "r.csv", COLS).append({"run_id": "a", "bogus": 1})
