"""Something-Something optical flow in Radevski et al.'s ``flow_dataset.hdf5`` layout (fixed-length
byte strings, one JPEG per frame pair) beside the RGB frames: read, missing, malformed, and the
Swin configuration trained end to end on it."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mmbalance.cli import main
from mmbalance.config import DataConfig
from mmbalance.data import DATASETS
from mmbalance.data.sthsth import SthSthTransform
from mmbalance.data.vision import IMAGENET_MEAN, IMAGENET_STD, center_crop, normalize
from mmbalance.errors import DataError
from mmbalance.testing.fixtures import flow_colour, write_sthsth_flow

from ..models.test_swin import official_state, save
from ._common import assert_frames

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# a uniform colour through JPEG (quality 95, 4:2:0 chroma) and back moves a channel by at most
# 1-2 levels (measured); 4 levels leaves room, far below the 30-level step between flow images
COLOUR_TOL = 4 / 255 / min(IMAGENET_STD)


@pytest.fixture
def root(tmp_path):
    return tmp_path, write_sthsth_flow(tmp_path)


def load(root, **kw):
    return DATASETS["sthsth"](DataConfig(root=str(root), image_size=16, num_frames=4, **kw))


def test_flow_is_read_beside_the_rgb_frames(root):
    root, rows = root
    with h5py.File(root / "flow_dataset.hdf5") as f:
        assert f["test0"].dtype.kind == "S" and f["test0"].shape == (5,)  # 6 RGB frames, 5 flow images
    b = load(root)
    assert b.shapes == {"video": (3, 4, 16, 16), "flow": (3, 4, 16, 16)}
    x, _ = b.test[0]
    # 5 flow images, 4 segments: middles 0, 1, 2, 3 in both files
    for t, k in enumerate([0, 1, 2, 3]):
        want = (torch.tensor(flow_colour(k)) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        assert torch.allclose(x["flow"][:, t].mean(dim=(1, 2)), want, atol=COLOUR_TOL), (t, k)
    assert_frames(x["video"], [0, 1, 2, 3])


def test_training_crops_keep_direction_and_scale():
    # a horizontal ramp, dark on the left: every training crop keeps it dark on the left (no
    # flip: "left to right" and "right to left" are different actions), and spans 1/1.43 to
    # 1/1.15 of the short side (the authors' scale jitter), so its ramp step per pixel is the
    # frame's step scaled by short/S in that range
    frame = torch.linspace(0, 1, 40).expand(3, 30, 40).contiguous()
    transform = SthSthTransform(16, train=True)
    steps = []
    for seed in range(30):
        torch.manual_seed(seed)
        clip = transform([frame, frame], 3)
        assert clip.shape == (3, 3, 16, 16) and torch.equal(clip[:, 0], clip[:, 1]) and not clip[:, 2].any()
        row = clip[0, 0].mean(0) * IMAGENET_STD[0]  # back to [0, 1] units (the mean cancels in differences)
        steps.append(float(row[-1] - row[0]) / 15)
        assert steps[-1] > 0
    # resized to width W, a step of 1/39 per source column becomes 40 / (39 W) per pixel, and
    # the short side is 30 W / 40: scale = (30 W / 40) / 16
    # (sides are whole pixels, so the short side is int(16 * U(1.15, 1.43)) = 18..22 px, scales
    # 1.125..1.375; the ramp measured across a crop strays ~0.01 from that near the image border,
    # where the antialiased resize clamps)
    scales = [30 / (39 * s) / 16 for s in steps]
    assert 1.125 - 0.02 < min(scales) and max(scales) < 1.375 + 0.02 and max(scales) - min(scales) > 0.15
    evaluation = SthSthTransform(16, train=False)([frame], 1)
    assert torch.equal(evaluation[:, 0], normalize(center_crop(frame, 16)))


def test_a_missing_flow_file_or_video(root):
    root, rows = root
    with h5py.File(root / "flow_dataset.hdf5", "a") as f:
        del f["test1"]
    with pytest.raises(DataError, match=r"flow_dataset.hdf5: no video 'test1' \(listed in something-something-v2-"
                                        r"validation.json; 1 missing in all\)"):
        load(root)
    (root / "flow_dataset.hdf5").unlink()
    with pytest.raises(DataError, match=r"flow_dataset.hdf5 does not exist \(expected an HDF5 file of JPEG-encoded "
                                        r"frames per video id\)"):
        load(root)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((0,), dtype="S4"), r"video 'test0' holds no frames; expected one encoded image \(JPEG bytes\) per frame"),
    (np.zeros((5, 24, 32, 3), dtype=np.uint8), r"video 'test0' holds an array of shape \(5, 24, 32, 3\) \(decoded "
                                               r"pixels\?\); expected one encoded image"),
])
def test_malformed_flow_entries(root, bad, message):
    root, _ = root
    with h5py.File(root / "flow_dataset.hdf5", "a") as f:
        del f["test0"]
        f.create_dataset("test0", data=bad)
    with pytest.raises(DataError, match="flow_dataset.hdf5: " + message):
        load(root).test[0]


def test_a_corrupt_flow_image_or_file(root):
    root, _ = root
    with h5py.File(root / "flow_dataset.hdf5", "a") as f:
        frames = list(f["test0"][()])
        frames[1] = b"no jpeg here"
        del f["test0"]
        f.create_dataset("test0", data=np.array(frames, dtype=np.bytes_))
    with pytest.raises(DataError, match=r"flow_dataset.hdf5: video 'test0' frame 1 is not a readable encoded image"):
        load(root).test[0]
    (root / "flow_dataset.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="flow_dataset.hdf5 is not a readable HDF5 file"):
        load(root)


def test_swin_mcr_config_trains_end_to_end(tmp_path):
    """configs/sthsth/swin/mcr.yaml as checked in (unimodal stages, then MCR with 16
    permutations and CEB) on the flow fixture, with a width-4 Swin-T (embedding 6) started
    from a Kinetics-layout checkpoint of that width, 16-px crops and 4 frames: trains, scores."""
    write_sthsth_flow(tmp_path / "ssv2", train=8, val=4)
    ckpt = save(tmp_path, official_state(6, (2, 2, 6, 2), (3, 6, 12, 24), (8, 7, 7), (2, 4, 4), index=False))
    out = tmp_path / "run"
    rc = main(["train", "--data", "sthsth", "--method", "mcr", "--config", str(CONFIGS / "sthsth" / "swin" / "mcr.yaml"),
               "--set", f"data.root={tmp_path / 'ssv2'}", f"model.pretrained={ckpt}", "model.base_width=4",
               "data.image_size=16", "data.num_frames=4", "data.batch_size=4", "data.val_fraction=0.25",
               "trainer.max_epochs=1", "trainer.progress=false", "trainer.log_every_n_steps=1", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "mcr" and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["config"]["model"]["encoder"] == "swin3d" and metrics["config"]["method"]["num_permutations"] == 16
