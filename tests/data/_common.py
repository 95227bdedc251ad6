"""Helpers shared by the dataset tests: the end-to-end CLI run and expected frame values."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmbalance.cli import main
from mmbalance.testing.fixtures import frame_value
from mmbalance.data.vision import IMAGENET_MEAN, IMAGENET_STD

#: a run small enough for seconds on 2 cores: 16-px frames, 0.25 s audio, width-4 ResNets
FAST = ["data.image_size=16", "data.audio_seconds=0.25", "data.batch_size=4", "model.base_width=4",
        "trainer.max_epochs=1", "trainer.progress=false", "trainer.patience=0", "trainer.log_every_n_steps=1"]
JPEG_TOL = 3 / 255 / min(IMAGENET_STD)  # JPEG may move a grey level by a step or two


def train_cli(name: str, root: Path, out: Path, *extra: str, method: str = "joint") -> dict:
    """``mmbalance train --data NAME --set data.root=ROOT ...`` in-process; returns metrics.json."""
    rc = main(["train", "--data", name, "--method", method, "--set", f"data.root={root}", *FAST, *extra,
               "--out", str(out)])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def normalized_grey(k: int) -> torch.Tensor:
    """(3,) value that frame k of a fixture clip has after ImageNet normalization."""
    v = frame_value(k) / 255.0
    return (torch.full((3,), v) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)


def assert_frames(video: torch.Tensor, ks) -> None:
    """Checks that the (3, T, S, S) clip holds fixture frames ``ks`` in that order."""
    for t, k in enumerate(ks):
        got = video[:, t].mean(dim=(1, 2))
        assert torch.allclose(got, normalized_grey(k), atol=JPEG_TOL), (t, k, got)
