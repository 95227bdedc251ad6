"""Nothing is read from the test split before the final evaluation, for every method.

Every run that :func:`mmbalance.training.train` makes (the final run and each pipeline
stage) builds its data through ``run.build_data``; the test replaces that bundle's test
split by :class:`GuardedSplit`, which raises :class:`TestSplitReadEarly` on any read of its
rows until it is armed, and records the first read. A split is armed when the real code
path passes a loader over it to ``lightning.Trainer.test``: that call *is* the final
evaluation (``train`` then also writes ``predictions.npz`` from the same split, and
``trainer.final_probe`` scores on it, both after). The split's length is not guarded: it
is a count, not data (``train`` prints it before training).

A method that needs held-out data during training (PMR's prototypes, AGM, MSLR, later
G-Blending, DnR, LFM) must take it from the validation split or from the training split.
"""

from __future__ import annotations

import dataclasses
import importlib
import traceback
from typing import Any, Dict, List, Optional

import lightning as L
import pytest
from torch.utils.data import DataLoader, Dataset

from mmbalance.methods import REGISTRY, get_method
from mmbalance.methods.joint import Joint

from ..conftest import tiny_config

run_module = importlib.import_module("mmbalance.training.run")


class TestSplitReadEarly(RuntimeError):
    """The test split was read before the final evaluation."""

    __test__ = False  # not a pytest class


class GuardedSplit(Dataset):
    """The test split of one run; its rows can be read only once :attr:`armed`.

    Attributes:
        run: the method of the run the split belongs to.
        armed: set when a loader over this split reaches ``Trainer.test``.
        in_test: True while that ``Trainer.test`` call runs.
        first_read: where the first read of a row happened (None: never read).
        reads: how many reads there were (item, block or attribute).
    """

    def __init__(self, inner: Dataset, run: str) -> None:
        self._inner, self.run = inner, run
        self.armed = self.in_test = False
        self.first_read: Optional[Dict[str, Any]] = None
        self.reads = 0

    def _read(self, how: str) -> None:
        self.reads += 1
        if self.first_read is None:
            self.first_read = {"how": how, "armed": self.armed, "in_test": self.in_test,
                               "where": "".join(traceback.format_stack(limit=12)[:-2])}
        if not self.armed:
            raise TestSplitReadEarly(f"{self.run}: the test split was read ({how}) before the final evaluation")

    def __len__(self) -> int:  # a count, not data
        return len(self._inner)

    def __getitem__(self, i):
        self._read("__getitem__")
        return self._inner[i]

    def __getitems__(self, positions):
        self._read("__getitems__")
        getitems = getattr(type(self._inner), "__getitems__", None)
        return getitems(self._inner, positions) if getitems else [self._inner[i] for i in positions]

    def __iter__(self):
        self._read("__iter__")
        return iter(self._inner[i] for i in range(len(self._inner)))

    def __getattr__(self, name: str):  # the wrapped split's own attributes (arrays, indices...)
        if name.startswith("_"):
            raise AttributeError(name)
        self._read(f".{name}")
        return getattr(self._inner, name)


def _guarded_datasets(loaders) -> List[GuardedSplit]:
    if loaders is None:
        return []
    found = []
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        dataset = getattr(loader, "dataset", None)
        if isinstance(dataset, GuardedSplit):
            found.append(dataset)
    return found


@pytest.fixture
def guards(monkeypatch) -> List[GuardedSplit]:
    """The test split of every run ``train`` builds from now on, in the order built."""
    made: List[GuardedSplit] = []
    real_build = run_module.build_data

    def build_data(cfg):
        data = real_build(cfg)
        guard = GuardedSplit(data.test, cfg.method)
        made.append(guard)
        guarded = dataclasses.replace(data, test=guard)
        _BUNDLES.append(guarded)
        return guarded

    real_test = L.Trainer.test

    def test(self, model=None, dataloaders=None, *args, **kwargs):
        final = _guarded_datasets(dataloaders)
        for guard in final:
            guard.armed = guard.in_test = True
        try:
            return real_test(self, model, dataloaders, *args, **kwargs)
        finally:
            for guard in final:
                guard.in_test = False

    monkeypatch.setattr(run_module, "build_data", build_data)
    monkeypatch.setattr(L.Trainer, "test", test)
    _BUNDLES.clear()
    yield made
    _BUNDLES.clear()


_BUNDLES: List[Any] = []  # the guarded bundles, for the toy method that peeks at the test split


def check_test_split_untouched(guard: GuardedSplit) -> None:
    """The split was read, and first by ``Trainer.test`` with it as the loader's data."""
    assert guard.first_read is not None, f"{guard.run}: the test split was never read (the guard saw nothing)"
    first = guard.first_read
    assert first["armed"] and first["in_test"], (
        f"{guard.run}: the test split was first read ({first['how']}) before the final evaluation, at\n"
        f"{first['where']}")


def _config(name: str, **overrides):
    explicit = {"method__modality": "x1"} if name == "unimodal" else {}  # it has no default modality
    return tiny_config(name, **explicit, **overrides)  # 2 epochs on 300 synthetic points


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_no_method_reads_the_test_split_before_the_final_evaluation(name, guards, tmp_path):
    metrics = run_module.train(_config(name), tmp_path / name)
    stages = get_method(name).stages(["x1", "x2"], _config(name).hparams)
    # one split per run: each stage's, then the method's own (built first, trained last)
    assert len(guards) == 1 + len(stages)
    assert [g.run for g in guards] == [name] + [s.method for s in stages]
    for guard in guards:
        check_test_split_untouched(guard)
    assert (tmp_path / name / "predictions.npz").exists()  # written from the armed split
    assert metrics["test"] and metrics["val"]
    assert set(metrics.get("stages", {})) == {s.name for s in stages}
    if get_method(name).trains_final:
        assert metrics["epochs_run"] == 2


@pytest.mark.parametrize("name, options", [
    ("gblending", {"method__held_out": "val"}),  # the default (train) runs in the test above
    ("lfm", {"method__weighting": "learned", "method__held_out": "val"}),  # the default: tests/methods/test_lfm.py
], ids=["gblending-held_out_val", "lfm-learned-held_out_val"])
def test_held_out_choices_do_not_read_the_test_split(name, options, guards, tmp_path):
    metrics = run_module.train(_config(name, trainer__max_epochs=1, **options), tmp_path / name)
    (guard,) = guards
    check_test_split_untouched(guard)
    assert metrics["epochs_run"] == 1 and metrics["test"]


class PeeksAtTest(Joint):
    """A toy method that 'calibrates' on held-out data at each epoch's start, and picks
    the wrong split; ``swallow``: it hides the guard's error (the record still tells)."""

    name = "peeks_at_test"
    swallow = False

    def on_epoch_start(self, epoch, train_loader=None):
        try:
            next(iter(DataLoader(_BUNDLES[-1].test, batch_size=4)))
        except TestSplitReadEarly:
            if not self.swallow:
                raise
        return super().on_epoch_start(epoch, train_loader)


class PeeksAtTestQuietly(PeeksAtTest):
    name = "peeks_at_test_quietly"
    swallow = True


class PeeksAfterFit(Joint):
    """Reads the test split in the validation hook, which also runs in the scoring on
    val after training: still before the final evaluation."""

    name = "peeks_after_fit"
    fitted = False

    def on_epoch_end(self, epoch):
        self.fitted = True  # (one epoch) the next validation is the scoring after training
        return super().on_epoch_end(epoch)

    def on_validation_end(self, metrics):
        if self.fitted:
            _BUNDLES[-1].test[0]
        return super().on_validation_end(metrics)


def test_the_guard_stops_a_method_that_reads_the_test_split_while_training(guards, monkeypatch, tmp_path):
    monkeypatch.setitem(REGISTRY, PeeksAtTest.name, PeeksAtTest)
    with pytest.raises(TestSplitReadEarly, match="peeks_at_test: the test split was read"):
        run_module.train(_config("peeks_at_test"), tmp_path / "loud")
    (guard,) = guards
    assert guard.first_read["armed"] is False and guard.first_read["in_test"] is False
    assert "on_epoch_start" in guard.first_read["where"]
    with pytest.raises(AssertionError, match="before the final evaluation"):
        check_test_split_untouched(guard)


def test_the_guard_catches_a_read_whose_error_the_method_swallows(guards, monkeypatch, tmp_path):
    monkeypatch.setitem(REGISTRY, PeeksAtTestQuietly.name, PeeksAtTestQuietly)
    metrics = run_module.train(_config("peeks_at_test_quietly"), tmp_path / "quiet")
    assert metrics["test"]  # the run itself finished
    (guard,) = guards
    assert guard.reads > 1  # the early reads, then the final evaluation's
    with pytest.raises(AssertionError, match="first read .*before the final evaluation"):
        check_test_split_untouched(guard)


def test_the_guard_counts_the_scoring_on_val_after_training_as_before_the_final_evaluation(
        guards, monkeypatch, tmp_path):
    monkeypatch.setitem(REGISTRY, PeeksAfterFit.name, PeeksAfterFit)
    validations, real_validate = [], L.Trainer.validate

    def validate(self, *args, **kwargs):  # train() calls it once, after fit, before test
        validations.append(self.current_epoch)
        return real_validate(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "validate", validate)
    with pytest.raises(TestSplitReadEarly):
        run_module.train(_config("peeks_after_fit", trainer__max_epochs=1), tmp_path / "late")
    assert validations == [1]  # the read failed in the scoring on val after the one epoch
    (guard,) = guards
    assert not guard.first_read["armed"] and not guard.first_read["in_test"]


def test_the_guard_fails_a_run_that_never_reads_the_test_split(guards, monkeypatch, tmp_path):
    """Not vacuous: a run whose test split is never scored fails the check."""
    monkeypatch.setattr(run_module.RunDir, "write_predictions", lambda self, method, loader: None)
    monkeypatch.setattr(L.Trainer, "test", lambda self, model, dataloaders, **kw: [{}])
    run_module.train(_config("joint", trainer__max_epochs=1), tmp_path / "never")
    (guard,) = guards
    with pytest.raises(AssertionError, match="never read"):
        check_test_split_untouched(guard)
