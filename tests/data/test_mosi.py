"""CMU-MOSI / MOSEI loaders on a small MultiBench-style pickle, and the sentiment metrics."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from mmbalance.config import DataConfig
from mmbalance.data import DATASETS
from mmbalance.data.affect_metrics import affect_metrics
from mmbalance.testing.fixtures import affect_table, write_affect
from mmbalance.errors import ConfigError, DataError

from ._common import train_cli


@pytest.fixture
def pkl(tmp_path):
    table = write_affect(tmp_path / "mosi" / "mosi_data.pkl")
    return tmp_path / "mosi" / "mosi_data.pkl", table


def load(root, name="mosi", **kw):
    return DATASETS[name](DataConfig(root=str(root), **kw))


def test_regression_items_drop_and_inf_replacement(pkl, caplog):
    path, table = pkl
    with caplog.at_level(logging.WARNING, logger="mmbalance.data"):
        b = load(path.parent)  # the folder holding mosi_data.pkl
    assert "dropped 1 sample(s) whose text features are all zero" in caplog.text
    assert "replaced 2 -inf value(s) in the audio features with 0" in caplog.text
    assert (len(b.train), len(b.val), len(b.test)) == (7, 4, 4) and b.num_classes == 1 and b.task == "regression"
    assert b.shapes == {"video": (6, 5), "audio": (6, 4), "text": (6, 6)}
    assert b.encoders == dict.fromkeys(("video", "audio", "text"), "transformer_seq")
    # train sample 1 (all-zero text) is dropped: row 0 is sample 0, row 1 is sample 2
    x0, y0 = b.train[0]
    x1, y1 = b.train[1]
    labels = table["train"]["labels"].reshape(-1)  # stored as (N, 1, 1)
    assert float(y0) == pytest.approx(labels[0]) and float(y1) == pytest.approx(labels[2])
    assert x0["audio"][3, 1] == 0 and x1["audio"][4, 0] == 0  # the -inf positions
    assert torch.allclose(x1["video"], torch.from_numpy(table["train"]["vision"][2]).float())


def test_binary_classification_uses_score_above_zero(pkl):
    path, table = pkl
    b = load(path, task="classification", modalities=["vision", "text"])
    assert b.num_classes == 2 and list(b.shapes) == ["video", "text"]
    scores = table["test"]["labels"].reshape(-1)
    assert [int(b.test[i][1]) for i in range(len(b.test))] == [int(s > 0) for s in scores]


def test_mosei_reads_its_own_file(tmp_path):
    write_affect(tmp_path / "mosei_senti_data.pkl", dims=(7, 4, 6))
    assert load(tmp_path, "mosei", modalities=["video", "audio"]).shapes == {"video": (6, 7), "audio": (6, 4)}


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="mosi_data.pkl does not exist"):
        load(tmp_path)
    path = tmp_path / "mosi_data.pkl"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="mosi_data.pkl is not a readable pickle"):
        load(path)
    table = affect_table()
    del table["valid"]
    path.write_bytes(pickle.dumps(table))
    with pytest.raises(DataError, match="mosi_data.pkl: no split 'valid'"):
        load(path)


@pytest.mark.parametrize("change, message", [
    (lambda t: t["test"].__setitem__("labels", np.zeros(3)), r"split 'test' has 3 labels"),
    (lambda t: t["train"].__setitem__("vision", np.zeros((8, 5))), r"'vision' has shape \(8, 5\); expected \(N, T, D\)"),
    (lambda t: t["train"]["vision"].__setitem__((0, 3, 0), np.nan), r"modality 'video' has NaN or Inf"),
    (lambda t: t["valid"].pop("audio"), r"split 'valid' has no 'audio' array"),
])
def test_malformed_pickles(tmp_path, change, message):
    table = affect_table()
    change(table)
    (tmp_path / "mosi_data.pkl").write_bytes(pickle.dumps(table))
    with pytest.raises(DataError, match=message):
        load(tmp_path)


def test_bad_options(pkl):
    with pytest.raises(ConfigError, match="unknown 'face'"):
        load(pkl[0], modalities=["video", "face"])
    with pytest.raises(ConfigError, match="at least 2 modalities"):
        load(pkl[0], modalities=["text"])


def test_sentiment_metrics_by_hand():
    preds = torch.tensor([2.6, -0.4, 0.2, -2.2, 0.0])
    truth = torch.tensor([3.0, -1.0, -0.3, -2.0, 1.0])
    m = affect_metrics("regression", 1)
    m.update(preds, truth)
    got = {k: float(v) for k, v in m.compute().items()}
    # Acc-7: round(clip) -> preds [3, 0, 0, -2, 0] vs truth [3, -1, 0, -2, 1]: 3 of 5
    assert got["acc7"] == pytest.approx(3 / 5)
    # Acc-2 with positive = score > 0: preds [1, 0, 1, 0, 0] vs truth [1, 0, 0, 0, 1]: 3 of 5
    assert got["acc2"] == got["accuracy"] == pytest.approx(3 / 5)
    # weighted F1: class 1 (support 2): tp 1, fp 1, fn 1 -> 0.5; class 0 (support 3): tp 2, fp 1, fn 1 -> 2/3
    assert got["f1"] == pytest.approx((2 * 0.5 + 3 * 2 / 3) / 5)
    assert got["mae"] == pytest.approx(float((preds - truth).abs().mean()))
    assert got["corr"] == pytest.approx(float(np.corrcoef(preds.numpy(), truth.numpy())[0, 1]), abs=1e-5)


def test_train_end_to_end_regression_and_classification(tmp_path):
    """Planted signal (every unpadded step of every modality offset by the score, shuffled
    scores), 40/12/20 train/valid/test samples, scores evenly spaced in [-3, 3] (10 of the 20
    test scores above 0, so classification chance is 1/2). Measured over run seeds 0-4
    (4 epochs, lr 0.01): regression corr 0.93, 0.92, 0.95, 0.94, 0.94; classification
    accuracy 0.90, 0.95, 0.90, 1.00, 0.95."""
    small = ["model.feature_dim=10", "model.hidden=16", "model.layers=1", "trainer.max_epochs=4", "optim.lr=0.01"]
    write_affect(tmp_path / "mosi" / "mosi_data.pkl", sizes=(40, 12, 20), signal=True)
    metrics = train_cli("mosi", tmp_path / "mosi", tmp_path / "reg", *small)
    assert {"acc7", "acc2", "f1", "mae", "corr"} <= set(metrics["test"])
    # an untrained or label-shuffled model: corr ~ 0 +- 0.23 on 20 samples, above 0.6 with p ~ 0.003
    assert metrics["test"]["corr"] > 0.6
    write_affect(tmp_path / "mosei" / "mosei_senti_data.pkl", sizes=(40, 12, 20), signal=True)
    metrics = train_cli("mosei", tmp_path / "mosei", tmp_path / "cls", *small, "data.task=classification",
                        "data.modalities=[video,text]")
    assert {"acc2", "f1"} <= set(metrics["test"])
    # at least 16 of 20 right (the bound sits between counts, clear of float32 rounding), chance
    # 10; labels shuffled against the inputs reach 16 with p ~ 0.006
    assert metrics["test"]["accuracy"] >= 1 / 2 + 0.28
