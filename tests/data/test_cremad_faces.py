"""CREMA-D's per-frame face features (``data.features=true``) in the layout the authors'
extractor writes (``Face_features/<clip>.npy``): present, missing, malformed."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from mmbalance.config import DataConfig
from mmbalance.data import DATASETS
from mmbalance.data.check import check_bundle
from mmbalance.errors import DataError
from mmbalance.testing.fixtures import write_cremad, write_cremad_faces


@pytest.fixture
def made(tmp_path):
    """(root, clip -> the face array written)."""
    root = tmp_path / "cremad"
    return root, write_cremad_faces(root, write_cremad(root, frames=1), dim=5, frames=(3, 7))


@pytest.fixture
def root(made):
    return made[0]


def load(root, **kw):
    return DATASETS["cremad"](DataConfig(root=str(root), features=True, **kw))


def test_items_are_standardized_zero_padded_feature_sequences(made):
    root, written = made
    b = load(root, num_frames=6)
    assert b.shapes == {"audio": (257, 188), "video": (6, 5)} and b.encoders == {"audio": "resnet18_audio",
                                                                                  "video": None}
    assert (len(b.train), len(b.val), len(b.test)) == (11, 1, 6)
    train = np.concatenate([written[c.key] for c in b.train.clips]).astype(np.float64)
    mean, std = train.mean(0), train.std(0)  # over every frame of the training clips
    for split in (b.train, b.test):
        for i, clip in enumerate(split.clips[:6]):
            x, y = split[i]
            rows = written[clip.key][:6]
            want = torch.zeros(6, 5)
            want[:len(rows)] = torch.from_numpy(((rows - mean) / std).astype(np.float32))
            assert torch.allclose(x["video"], want, atol=1e-5) and int(y) == clip.label
            assert x["audio"].shape == (257, 188)
    lengths = {len(written[c.key]) for c in b.train.clips[:6]}
    assert min(lengths) < 6 < max(lengths)  # both padded and cut clips were seen


def test_default_length_is_the_authors_cap_and_waveforms_work_too(made):
    root, written = made
    b = load(root, audio_input="waveform", sample_rate=16000)
    x, _ = b.train[0]
    assert x["video"].shape == (150, 5) and x["audio"].shape == (48000,)
    assert b.encoders == {"audio": None, "video": None}
    assert (x["video"].abs().sum(-1) > 0).sum() == len(written[b.train.clips[0].key])


def test_the_data_check_reads_the_wavs_and_the_frames_are_not_needed(root):
    import shutil
    shutil.rmtree(root / "Image-01-FPS")
    b = load(root)
    report = check_bundle(b, "cremad", root)
    assert (report.items, report.what) == (18, "18 files")  # the WAVs; load read the face files' headers


def test_missing_folder_names_the_layout(tmp_path):
    write_cremad(tmp_path, frames=1)
    with pytest.raises(DataError, match=r"Face_features does not exist \(expected Face_features/<clip>\.npy, "
                                        r"one float array \(F, 1408\)"):
        load(tmp_path)


def test_a_clip_without_faces_is_skipped_and_counted(tmp_path, caplog):
    rows = write_cremad(tmp_path, frames=1)
    gone = rows["test"][0][0]
    write_cremad_faces(tmp_path, rows, dim=5, missing=[gone])
    with caplog.at_level(logging.WARNING, logger="mmbalance.data"):
        b = load(tmp_path)
    assert len(b.test) == 5 and gone not in {c.key for c in b.test.clips}
    assert "skipped 1 clip(s) whose WAV or face-feature file is missing" in caplog.text


def test_a_split_without_any_face_file_is_an_error(tmp_path):
    rows = write_cremad(tmp_path, frames=1)
    write_cremad_faces(tmp_path, rows, dim=5, missing=[c for c, _ in rows["test"]])
    with pytest.raises(DataError, match="no test clip .* has both AudioWAV/<clip>.wav and Face_features/<clip>.npy"):
        load(tmp_path)


def _replace(root, clip, write):
    path = root / "Face_features" / f"{clip}.npy"
    path.unlink()
    write(path)
    return path


@pytest.mark.parametrize("bad, message", [
    (lambda p: np.save(p, np.zeros((4, 5, 2), np.float32)), r"float32 array of shape \(4, 5, 2\)"),
    (lambda p: np.save(p, np.zeros((0, 5), np.float32)), r"shape \(0, 5\)"),
    (lambda p: np.save(p, np.array(["a", "b"])[:, None]), r"<U1 array"),
    (lambda p: np.save(p, np.zeros((4, 3), np.float32)), "has 3 features per frame"),
    (lambda p: np.save(p, np.array([[object()]], dtype=object), allow_pickle=True), "not a readable .npy array"),
    (lambda p: p.write_bytes(pickle.dumps(np.zeros((4, 5)))), "not a readable .npy array"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (9, 5), }"
                             + b" " * 50 + b"\n" + b"\x00" * 16), "not a readable .npy array"),
    (lambda p: np.savez(open(p, "wb"), faces=np.zeros((4, 5))), "an .npz archive"),
])
def test_a_malformed_file_stops_loading_naming_it(root, bad, message):
    b = load(root)
    path = _replace(root, b.test.clips[0].key, bad)
    with pytest.raises(DataError, match=message) as err:
        load(root)
    assert str(path) in str(err.value)


def test_values_are_checked_when_read_and_pickles_never_run(root, tmp_path):
    b = load(root)
    path = _replace(root, b.test.clips[1].key, lambda p: np.save(p, np.full((4, 5), np.nan, np.float32)))
    with pytest.raises(DataError, match="NaN or infinite"):
        b.test[1]
    flag = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(flag), "w"))
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match="not a readable .npy array"):
        b.test[1]
    assert not flag.exists()
