"""Something-Something v2 loader on fixture HDF5 files (JPEG frames per video id) and JSONs."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmbalance.config import DataConfig
from mmbalance.data import DATASETS
from mmbalance.testing.fixtures import write_sthsth, write_sthsth_features
from mmbalance.data.sthsth import segment_indices
from mmbalance.errors import DataError

from ._common import assert_frames, train_cli


@pytest.fixture
def root(tmp_path):
    (tmp_path / "ssv2").mkdir()
    return tmp_path / "ssv2", write_sthsth(tmp_path / "ssv2")


def load(root, **kw):
    return DATASETS["sthsth"](DataConfig(root=str(root), image_size=16, num_frames=4, **kw))


def test_segment_sampler_by_hand():
    # length 6, 4 segments of (6 - 1) / 4 = 1.25: bounds (0,1) (1,2) (2,4) (4,5) -> middles 0, 1, 3, 4
    assert segment_indices(6, 4, train=False) == [0, 1, 3, 4]
    torch.manual_seed(0)
    for _ in range(20):
        got = segment_indices(6, 4, train=True)
        assert all(lo <= g <= hi for g, (lo, hi) in zip(got, [(0, 1), (1, 2), (2, 4), (4, 5)]))


def test_shapes_labels_and_splits(root):
    root, rows = root
    b = load(root)
    assert b.shapes == {"video": (3, 4, 16, 16), "flow": (3, 4, 16, 16)} and b.num_classes == 2
    assert (len(b.train), len(b.val), len(b.test)) == (5, 1, 2)
    assert b.test.items == rows["test"]
    x, y = b.test[0]
    # rgb has 6 frames and flow 5: indices come from the shorter (5): middles of (0,1) (1,2) (2,3) (3,4)
    assert segment_indices(5, 4, train=False) == [0, 1, 2, 3]
    assert_frames(x["video"], [0, 1, 2, 3])
    assert_frames(x["flow"], [0, 1, 2, 3])
    assert int(y) == rows["test"][0][1]


def test_video_and_flow_share_indices_and_crop(root):
    torch.manual_seed(3)
    x, _ = load(root[0]).train[0]
    assert torch.equal(x["video"], x["flow"])  # same frame values in both files, same crop and flip


def test_workers_open_their_own_files(root):
    b = load(root[0])
    batch = next(iter(DataLoader(b.test, batch_size=2, num_workers=1)))
    assert batch[0]["video"].shape == (2, 3, 4, 16, 16)


def test_missing_video_and_unknown_template(root):
    root, rows = root
    with h5py.File(root / "flow_dataset.hdf5", "a") as f:
        del f[rows["test"][1][0]]
    with pytest.raises(DataError, match=rf"flow_dataset.hdf5: no video '{rows['test'][1][0]}'"):
        load(root)
    entries = json.loads((root / "something-something-v2-validation.json").read_text())
    entries[0]["template"] = "Juggling [something]"
    (root / "something-something-v2-validation.json").write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"validation.json: video 'test0' has template 'Juggling something'"):
        load(root)


def test_corrupt_frame_and_bad_files(root):
    root, rows = root
    with h5py.File(root / "dataset.hdf5", "a") as f:
        f[rows["test"][0][0]][0] = np.frombuffer(b"no jpeg here", dtype=np.uint8)
    with pytest.raises(DataError, match=r"dataset.hdf5: video 'test0' frame 0 is not a readable encoded image"):
        load(root).test[0]
    (root / "dataset.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="dataset.hdf5 is not a readable HDF5 file"):
        load(root)
    (root / "something-something-v2-labels.json").write_text("{broken")
    with pytest.raises(DataError, match="labels.json is not readable JSON"):
        load(root)


def test_pre_extracted_features(tmp_path):
    write_sthsth_features(tmp_path)
    b = DATASETS["sthsth"](DataConfig(root=str(tmp_path), features=True))
    assert b.shapes == {"video": (6,), "flow": (5,)} and len(b.test) == 4 and len(b.train) + len(b.val) == 8
    (tmp_path / "val_features.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="val_features.pt is not a readable torch file"):
        DATASETS["sthsth"](DataConfig(root=str(tmp_path), features=True))


def test_train_end_to_end(tmp_path):
    """Planted signal (dark or light noisy frames, in video and flow alike), 2 templates
    alternating; 20 training videos (val_fraction 0.3 carves 3 per class), 20 test videos;
    chance 1/2. Measured over run seeds 0-5 (6 epochs, lr 0.01): 1.00 except seed 4 (0.95)."""
    (tmp_path / "ssv2").mkdir()
    write_sthsth(tmp_path / "ssv2", train=20, val=20, signal=True)
    metrics = train_cli("sthsth", tmp_path / "ssv2", tmp_path / "run", "data.num_frames=2", "data.val_fraction=0.3",
                        "trainer.max_epochs=6", "optim.lr=0.01")
    # at least 17 of 20 right (the bound sits between counts, clear of float32 rounding), chance
    # 10; labels shuffled against the inputs reach 17 with p ~ 0.001
    assert metrics["test"]["accuracy"] >= 1 / 2 + 0.33
