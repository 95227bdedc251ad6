"""A broken data file is found before training, not after it: the pass over every
lazily read file of every split, its cache, ``train`` stopping before the first epoch, and
``mmbalance data check``."""

from __future__ import annotations

import logging
import os
import pickle

import h5py
import numpy as np
import pytest

from mmbalance.cli import main
from mmbalance.config import DataConfig
from mmbalance.data import DATASETS, check
from mmbalance.errors import DataError
from mmbalance.testing.fixtures import write_affect, write_ave, write_cremad, write_sthsth, write_ucf51

from ._common import FAST

#: write_ave's default: 3 classes x (2, 1, 1) videos per split, each 1 spectrogram + 4 frames
AVE_FILES = 3 * (2 + 1 + 1) * (1 + 4)


def ave(tmp_path):
    rows = write_ave(tmp_path / "ave")
    bundle = DATASETS["ave"](DataConfig(root=str(tmp_path / "ave"), image_size=16))
    return tmp_path / "ave", rows, bundle


def spec(root, video):
    return root / "Audio-1004-SE" / f"{video}.pkl"


@pytest.fixture
def counted(monkeypatch):
    """Counts the files the pass reads (the per-file checker's calls)."""
    calls = []
    real = check.check_item

    def counting(item, handles):
        calls.append(item.key)
        return real(item, handles)

    monkeypatch.setattr(check, "check_item", counting)
    return calls


# ------------------------------------------------------------------ the pass and its cache

def test_every_file_of_every_split_is_read_once_then_known_from_the_cache(tmp_path, counted):
    root, _, bundle = ave(tmp_path)
    report = check.check_bundle(bundle, "ave", root)
    assert (report.items, report.cached, len(counted), len(set(counted))) == (AVE_FILES, 0, AVE_FILES, AVE_FILES)
    assert report.summary("ave").startswith(f"ave: {AVE_FILES} files OK in ")
    counted.clear()
    again = check.check_bundle(bundle, "ave", root)
    assert (again.items, again.cached, counted) == (AVE_FILES, AVE_FILES, [])
    assert again.summary("ave").endswith(f"(0 read, {AVE_FILES} known from the cache)")


def test_a_changed_mtime_or_size_checks_the_file_again(tmp_path, counted):
    root, rows, bundle = ave(tmp_path)
    check.check_bundle(bundle, "ave", root)
    counted.clear()
    touched = spec(root, rows["val"][0][0])
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    check.check_bundle(bundle, "ave", root)
    assert counted == [str(touched)]
    counted.clear()
    bad = spec(root, rows["test"][1][0])
    mtime = bad.stat().st_mtime_ns
    bad.write_bytes(pickle.dumps(np.zeros((257, 39), np.float32)))  # another size, the old mtime
    os.utime(bad, ns=(mtime, mtime))
    with pytest.raises(DataError, match=rf"^spectrogram file {bad} holds an array of shape \(257, 39\); "
                                        r"expected \(257, 40\) like the first training clip$"):
        check.check_bundle(bundle, "ave", root)
    assert counted == [str(bad)]


def test_a_bad_file_is_checked_again_every_time(tmp_path, counted):
    root, rows, bundle = ave(tmp_path)
    (root / "Image-01-FPS-SE" / rows["val"][0][0] / "00002.jpg").write_bytes(b"not a jpeg")
    reads = []
    for _ in range(2):
        counted.clear()
        with pytest.raises(DataError, match=r"00002.jpg is not a readable image"):
            check.check_bundle(bundle, "ave", root)
        reads.append(len(counted))
    assert reads == [AVE_FILES, 1]  # the good files were remembered, the bad one was not


def test_several_bad_files_are_one_error_with_their_count(tmp_path):
    root, rows, bundle = ave(tmp_path)
    first = spec(root, rows["train"][1][0])
    first.write_bytes(pickle.dumps(np.float32(1.0)))
    spec(root, rows["test"][0][0]).write_bytes(b"garbage")
    (root / "Image-01-FPS-SE" / rows["val"][2][0] / "00001.jpg").unlink()
    with pytest.raises(DataError) as caught:
        check.check_bundle(bundle, "ave", root)
    assert str(caught.value) == f"3 bad data files; first: spectrogram file {first} holds an array of shape (); expected 2-D"


def test_the_cache_lives_outside_the_data_root_where_the_environment_says(tmp_path, monkeypatch):
    root, _, bundle = ave(tmp_path)
    before = sorted(p for p in root.rglob("*"))
    monkeypatch.setenv(check.CACHE_ENV, str(tmp_path / "mine"))
    check.check_bundle(bundle, "ave", root)
    assert sorted(p for p in root.rglob("*")) == before
    assert [p.parent for p in (tmp_path / "mine").rglob("*.json")] == [tmp_path / "mine" / "data-check"]
    monkeypatch.delenv(check.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert check.cache_dir() == tmp_path / "xdg" / "mmbalance"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert check.cache_dir() == tmp_path / "home" / ".cache" / "mmbalance"


def test_an_unwritable_cache_warns_and_the_check_still_passes(tmp_path, monkeypatch, caplog):
    root, _, bundle = ave(tmp_path)
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv(check.CACHE_ENV, str(tmp_path / "a-file" / "cache"))  # no folder can be made there
    with caplog.at_level(logging.WARNING, logger="mmbalance.data"):
        assert check.check_bundle(bundle, "ave", root).items == AVE_FILES
    assert "could not write its cache" in caplog.text


def test_progress_lines_during_a_long_pass(tmp_path, monkeypatch):
    root, _, bundle = ave(tmp_path)
    monkeypatch.setattr(check, "PROGRESS_EVERY", -1.0)  # every file counts as "long"
    lines = []
    check.check_bundle(bundle, "ave", root, progress=lines.append)
    assert lines[0] == f"checking ave data files: 1/{AVE_FILES}" and lines[-1].endswith(f"{AVE_FILES}/{AVE_FILES}")


# ------------------------------------------------------------------ the other lazily read datasets

def test_cremad_wav_headers(tmp_path):
    rows = write_cremad(tmp_path / "c", train_per_class=1, test_per_class=1, frames=1)
    bundle = DATASETS["cremad"](DataConfig(root=str(tmp_path / "c"), image_size=16))
    clips = len(rows["train"]) + len(rows["test"])
    assert check.check_bundle(bundle, "cremad", tmp_path / "c").items == 2 * clips  # a WAV and a frame each
    wav = tmp_path / "c" / "AudioWAV" / f"{rows['test'][0][0]}.wav"
    wav.write_bytes(wav.read_bytes()[:30])  # the RIFF header cut inside its fmt chunk
    with pytest.raises(DataError, match=rf"^audio file {wav} is not a readable WAV file"):
        check.check_bundle(bundle, "cremad", tmp_path / "c")
    head = bytearray(open(tmp_path / "c" / "AudioWAV" / f"{rows['test'][1][0]}.wav", "rb").read(44))
    head[40:44] = (0).to_bytes(4, "little")  # a data chunk of no samples
    head[4:8] = (36).to_bytes(4, "little")
    wav.write_bytes(bytes(head))
    with pytest.raises(DataError, match=rf"^audio file {wav} holds no samples"):
        check.check_bundle(bundle, "cremad", tmp_path / "c")


def test_sthsth_videos_in_the_hdf5_files(tmp_path):
    (tmp_path / "s").mkdir()
    rows = write_sthsth(tmp_path / "s", train=4, val=2, frames=3)
    bundle = DATASETS["sthsth"](DataConfig(root=str(tmp_path / "s"), image_size=16))
    assert check.check_bundle(bundle, "sthsth", tmp_path / "s").items == 2 * (4 + 2)  # video and flow
    with h5py.File(tmp_path / "s" / "flow_dataset.hdf5", "a") as f:
        del f[rows["test"][1][0]]
        f.create_dataset(rows["test"][1][0], (0,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
    with pytest.raises(DataError, match=rf"flow_dataset.hdf5: video '{rows['test'][1][0]}' has no frames$"):
        check.check_bundle(bundle, "sthsth", tmp_path / "s")


def test_ucf_clips_in_memory(tmp_path):
    write_ucf51(tmp_path / "u")
    bundle = DATASETS["ucf51"](DataConfig(root=str(tmp_path / "u"), image_size=16))
    report = check.check_bundle(bundle, "ucf51", tmp_path / "u")
    assert (report.items, report.summary("ucf51").split(" OK")[0]) == (12, "ucf51: 12 in-memory clips")
    bundle.test.clips[0].audio = np.array(["a", "b"])
    with pytest.raises(DataError, match=rf"^clip {bundle.test.clips[0].key}: audio of dtype <U1; expected numbers$"):
        check.check_bundle(bundle, "ucf51", tmp_path / "u")


def test_tables_read_whole_while_loading_leave_nothing_to_check(tmp_path):
    write_affect(tmp_path / "mosi_data.pkl")
    report = check.check_bundle(DATASETS["mosi"](DataConfig(root=str(tmp_path))), "mosi", tmp_path)
    assert report.items == 0 and "no file is read per item" in report.summary("mosi")
    assert not list((tmp_path / "mosi_data.pkl").parent.glob("*.json"))


# ------------------------------------------------------------------ train and the command line

@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_malformed_file_in_any_split_stops_train_before_the_first_epoch(tmp_path, split, capsys, monkeypatch):
    from mmbalance.training import run

    rows = write_ave(tmp_path / "ave")
    video = rows[split][1][0]  # not the first training clip, which loading the bundle reads
    bad = spec(tmp_path / "ave", video)
    bad.write_bytes(pickle.dumps({"not": "an array"}))
    monkeypatch.setattr(run, "_trainer", lambda *a, **k: pytest.fail("the epoch loop was reached"))
    rc = main(["train", "--data", "ave", "--method", "joint", "--set", f"data.root={tmp_path / 'ave'}", *FAST,
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: spectrogram file {bad} is not a readable pickled array (")
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # no run folder, no checkpoint


def test_data_check_command(tmp_path, capsys):
    rows = write_ave(tmp_path / "ave")
    args = ["data", "check", "--data", "ave", "--set", f"data.root={tmp_path / 'ave'}"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"ave: {AVE_FILES} files OK in ")
    assert main(args) == 0 and f"(0 read, {AVE_FILES} known from the cache)" in capsys.readouterr().out
    for split in ("val", "test"):
        spec(tmp_path / "ave", rows[split][0][0]).write_bytes(pickle.dumps(np.zeros(3, np.float32)))
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"error: 2 bad data files; first: spectrogram file {spec(tmp_path / 'ave', rows['val'][0][0])} "
                            "holds an array of shape (3,); expected 2-D\n")
    assert main(["data", "check", "--data", "ave"]) == 2
    assert "needs --set data.root=PATH" in capsys.readouterr().err
