"""Held-out rows carved from the training split (``Method.held_out_rows``, used by G-Blending's
``held_out=train`` and LFM's learned weight): a seeded, disjoint draw; in a real run
(``training.train``) every row read by a training step is outside it, each kept row is
trained on once per epoch, the epoch-end pass reads exactly the carved rows as its held-out
split and not the run's validation split; ``held_out=val`` trains on every row and passes
over the validation split. (The test split stays unread until the final evaluation:
tests/methods/test_test_split_guard.py runs both choices.)"""

from __future__ import annotations

import dataclasses
import importlib
from collections import Counter, defaultdict

import numpy as np
import pytest
from torch.utils.data import Dataset

from mmbalance.errors import ConfigError
from mmbalance.methods.gblending import GBlending
from mmbalance.methods.lfm import LFM
from mmbalance.training import build_data
from mmbalance.training.build import hold_out

from ..conftest import tiny_config
from .test_gblending import _model

run_module = importlib.import_module("mmbalance.training.run")


def test_hold_out_is_seeded_disjoint_and_refuses_impossible_sizes():
    data = build_data(tiny_config("gblending"))
    total = len(data.train)
    kept, held = hold_out(data, 30, seed=4)
    again = hold_out(data, 30, seed=4)[1]
    other = hold_out(data, 30, seed=5)[1]
    assert list(held.indices) == list(again.indices) and list(held.indices) != list(other.indices)
    assert len(held) == 30 and len(kept.train) == total - 30
    assert sorted(set(held.indices) | set(kept.train.indices)) == list(range(total))
    assert not set(held.indices) & set(kept.train.indices)
    assert kept.val is data.val and kept.test is data.test  # only the training split changes
    for rows in (0, total):
        with pytest.raises(ConfigError, match=f"cannot hold out {rows} of the {total} training rows"):
            hold_out(data, rows, seed=0)


def test_how_many_rows_each_method_holds_out():
    assert GBlending(_model(), GBlending.Hyperparameters()).held_out_rows(205) == 20  # round(0.1 * 205)
    assert GBlending(_model(), GBlending.Hyperparameters(held_out_fraction=0.25)).held_out_rows(10) == 2
    assert GBlending(_model(), GBlending.Hyperparameters(held_out_fraction=0.01)).held_out_rows(10) == 1
    assert GBlending(_model(), GBlending.Hyperparameters(held_out="val")).held_out_rows(205) == 0
    assert LFM(_model(), LFM.Hyperparameters(weighting="learned")).held_out_rows(205) == 16
    assert LFM(_model(), LFM.Hyperparameters(weighting="heuristic")).held_out_rows(205) == 0
    assert LFM(_model(), LFM.Hyperparameters(weighting="learned", held_out="val")).held_out_rows(205) == 0
    for bad, match in (({"held_out": "test"}, "held_out 'test'"), ({"held_out_fraction": 1.0}, "held_out_fraction")):
        with pytest.raises(ConfigError, match=match):
            GBlending(_model(), GBlending.Hyperparameters(**bad))
    with pytest.raises(ConfigError, match="held_out 'test'"):
        LFM(_model(), LFM.Hyperparameters(held_out="test"))
    with pytest.raises(ConfigError, match=r"val_rows \(17\)"):
        LFM(_model(), LFM.Hyperparameters(weighting="learned", val_rows=17))


class Recording(Dataset):
    """A split that logs ``(phase, row)`` for every row read; ``phase`` is set by the test."""

    def __init__(self, inner, name, log, phase) -> None:
        self._inner, self._name, self._log, self._phase = inner, name, log, phase

    def __len__(self) -> int:
        return len(self._inner)

    def _note(self, rows) -> None:
        for i in rows:
            self._log[(self._name, self._phase[0])].append(int(i))

    def __getitem__(self, i):
        self._note([i])
        return self._inner[i]

    def __getitems__(self, rows):
        self._note(rows)
        getitems = getattr(type(self._inner), "__getitems__", None)
        return getitems(self._inner, rows) if getitems else [self._inner[i] for i in rows]

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)


def _recorded_run(monkeypatch, tmp_path, held_out, epochs=3):
    log, phase = defaultdict(list), [None]
    real_build = run_module.build_data
    sizes = {}

    def build(cfg):
        data = real_build(cfg)
        sizes["train"] = len(data.train)
        return dataclasses.replace(data, train=Recording(data.train, "train", log, phase),
                                   val=Recording(data.val, "val", log, phase))

    real_start, real_pass = GBlending.on_epoch_start, GBlending.on_epoch_pass

    def on_epoch_start(self, epoch, train_loader=None):
        phase[0] = ("fit", epoch)
        return real_start(self, epoch, train_loader)

    def on_epoch_pass(self, epoch, passes):
        phase[0] = ("pass", epoch)
        try:
            return real_pass(self, epoch, passes)
        finally:
            phase[0] = None

    monkeypatch.setattr(run_module, "build_data", build)
    monkeypatch.setattr(GBlending, "on_epoch_start", on_epoch_start)
    monkeypatch.setattr(GBlending, "on_epoch_pass", on_epoch_pass)
    cfg = tiny_config("gblending", method__held_out=held_out, method__super_epoch=1, trainer__max_epochs=epochs)
    metrics = run_module.train(cfg, tmp_path / held_out)
    assert metrics["epochs_run"] == epochs
    return log, sizes["train"]


def test_carved_rows_are_never_trained_on_and_are_the_passes_held_out_split(monkeypatch, tmp_path):
    log, total = _recorded_run(monkeypatch, tmp_path, "train", epochs=2)
    trained = set().union(*(log[("train", ("fit", e))] for e in range(2)))
    held = set(range(total)) - trained
    assert len(held) == round(0.1 * total)
    expected = set(np.sort(np.random.default_rng((0, 1)).permutation(total)[:len(held)]).tolist())
    assert held == expected  # the seeded draw of hold_out, seed 0 (the tiny config's)
    for e in range(2):
        fit = Counter(log[("train", ("fit", e))])
        assert set(fit) == trained and set(fit.values()) == {1}  # every kept row once per epoch
        passed = Counter(log[("train", ("pass", e))])
        # the pass reads the kept rows (its 'train' split) and the carved rows (its 'val'), once each
        assert set(passed) == set(range(total)) and set(passed.values()) == {1}
        assert not log[("val", ("pass", e))]  # the run's validation split is not the held-out data


def test_held_out_val_trains_on_every_row_and_passes_over_the_validation_split(monkeypatch, tmp_path):
    log, total = _recorded_run(monkeypatch, tmp_path, "val", epochs=1)
    for e in range(1):
        assert Counter(log[("train", ("fit", e))]) == Counter(range(total))
        assert Counter(log[("train", ("pass", e))]) == Counter(range(total))
        assert log[("val", ("pass", e))]  # the validation split, read by the pass
