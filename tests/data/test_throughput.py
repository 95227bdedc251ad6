"""``mmbalance data throughput``: samples/s per loader split and for the model step."""

from __future__ import annotations

import json

import pytest

from mmbalance.cli import main
from mmbalance.testing.fixtures import write_fixture
from mmbalance.bench.throughput import measure

SMALL = {"model.feature_dim": 10, "model.hidden": 16, "model.layers": 1, "data.batch_size": 4}


def test_measure_rows_cover_every_split_and_the_model(tmp_path):
    root = write_fixture("mosi", tmp_path / "mosi")
    rows = measure("mosi", {**SMALL, "data.root": str(root)}, batches=10)
    assert [r["stage"] for r in rows] == ["load train", "load val", "load test", "model step (cpu)"]
    assert [r["samples"] for r in rows[:3]] == [7, 4, 4]  # every sample of the small splits
    assert all(r["samples_per_s"] > 0 for r in rows)


@pytest.mark.filterwarnings("ignore:.*pin_memory.*no accelerator")
def test_command_with_workers_and_pinned_memory(tmp_path, capsys):
    root = write_fixture("ucf51", tmp_path / "ucf")
    out = tmp_path / "rows.json"
    rc = main(["data", "throughput", "--data", "ucf51", "--batches", "2", "--out", str(out), "--set",
               f"data.root={root}", "data.num_workers=1", "data.pin_memory=true", "data.image_size=16",
               "data.audio_seconds=0.25", "data.batch_size=2", "model.base_width=4"])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert rows[0] == {**rows[0], "dataset": "ucf51", "stage": "load train", "samples": 4}
    assert "samples/s" in capsys.readouterr().out


def test_command_needs_a_dataset(capsys):
    assert main(["data", "throughput"]) == 2
    assert capsys.readouterr().err.startswith("error: data throughput needs exactly one of --data NAME or --fixtures")
