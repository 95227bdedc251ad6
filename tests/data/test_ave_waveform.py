"""AVE waveforms (``data.audio_input=waveform``): ``Audios/<VideoID>.wav`` as the MCR authors'
HuBERT loader reads them (present, missing, malformed), resampled to 16 kHz and cut or tiled
to ``data.audio_seconds``, and the data check over the WAV headers."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from mmbalance.config import DataConfig
from mmbalance.data import DATASETS, check
from mmbalance.data.audio import read_wav
from mmbalance.data.ave import CLASSES
from mmbalance.errors import ConfigError, DataError
from mmbalance.testing.fixtures import write_ave

from ._common import assert_frames, train_cli

RATE, SECONDS = 44100, 0.5  # the fixture's WAVs: moviepy's 44.1 kHz, two channels


@pytest.fixture
def root(tmp_path):
    rows = write_ave(tmp_path / "ave", wavs=True, wav_seconds=SECONDS, wav_rate=RATE, spectrograms=False)
    return tmp_path / "ave", rows


def load(root, **kw):
    kw = {"audio_input": "waveform", "audio_seconds": SECONDS, **kw}
    return DATASETS["ave"](DataConfig(root=str(root), image_size=16, **kw))


def wav(root, video):
    return root / "Audios" / f"{video}.wav"


def test_items_are_16k_waveforms_of_the_clip_and_need_no_spectrogram(root):
    root, rows = root
    b = load(root)
    assert b.shapes == {"audio": (8000,), "video": (3, 4, 16, 16)} and b.encoders["audio"] is None
    assert [len(s) for s in (b.train, b.val, b.test)] == [len(rows[s]) for s in ("train", "val", "test")]
    x, y = b.test[0]
    vid, cls = rows["test"][0]
    assert int(y) == CLASSES.index(cls) and x["audio"].dtype == torch.float32
    assert_frames(x["video"], [0, 1, 2, 3])
    # the two channels averaged, 44.1 kHz -> 16 kHz: the same tone, at the rate HuBERT takes
    wave, rate = read_wav(wav(root, vid))
    assert rate == RATE and wave.shape == (int(RATE * SECONDS),)
    got = x["audio"].numpy()
    spectrum = np.abs(np.fft.rfft(got))
    freq = np.argmax(spectrum) * 16000 / len(got)
    assert abs(freq - (200 + 10 * (len(rows["train"]) + len(rows["val"])))) < 4  # write_ave's tone of this clip
    assert abs(np.abs(got).max() - 0.75 * 0.5) < 0.01  # mean of amplitudes 0.5 and 0.25


def test_a_short_clip_is_tiled_and_a_long_one_cut_to_audio_seconds(root):
    root, rows = root
    tiled = load(root, audio_seconds=1.2).train[0][0]["audio"]
    assert tiled.shape == (19200,) and torch.equal(tiled[8000:16000], tiled[:8000])
    cut = load(root, audio_seconds=0.25, sample_rate=8000).train[0][0]["audio"]
    assert cut.shape == (2000,)


def test_a_missing_wav_is_skipped_and_counted_and_a_missing_folder_is_one_error(root, caplog):
    root, rows = root
    wav(root, rows["train"][0][0]).unlink()
    with caplog.at_level(logging.WARNING, logger="mmbalance.data"):
        b = load(root)
    assert len(b.train) == len(rows["train"]) - 1
    assert "skipped 1 video(s) whose WAV or frame folder is missing" in caplog.text
    shutil.rmtree(root / "Audios")
    with pytest.raises(DataError, match=r"data.audio_input=waveform reads Audios/<VideoID>.wav.* is not a folder"):
        load(root)
    with pytest.raises(DataError, match=r"no video of .*trainSet.txt has both its spectrogram"):
        load(root, audio_input="spectrogram")  # nor were spectrograms written


def test_malformed_wavs_name_the_file_in_the_check_and_when_read(root):
    root, rows = root
    bundle = load(root)
    clips = sum(len(rows[s]) for s in rows)
    assert check.check_bundle(bundle, "ave", root).items == clips * 5  # a WAV and 4 frames each
    bad = wav(root, rows["test"][0][0])
    bad.write_bytes(bad.read_bytes()[:30])  # the RIFF header cut inside its fmt chunk
    with pytest.raises(DataError, match=rf"^audio file {bad} is not a readable WAV file"):
        check.check_bundle(bundle, "ave", root)
    with pytest.raises(DataError, match=rf"^audio file {bad} is not a readable WAV file"):
        bundle.test[0]
    bad.write_bytes(b"not a wav at all")
    with pytest.raises(DataError, match=rf"^audio file {bad} is not a readable WAV file"):
        check.check_bundle(bundle, "ave", root)


def test_wav_headers_are_checked_once_then_known_from_the_cache(root, monkeypatch):
    root, rows = root
    bundle = load(root)
    read = []
    real = check._check_wav
    monkeypatch.setattr(check, "_check_wav", lambda path: (read.append(path), real(path)))
    first = check.check_bundle(bundle, "ave", root)
    assert len(read) == sum(len(rows[s]) for s in rows) and first.cached == 0
    read.clear()
    again = check.check_bundle(bundle, "ave", root)
    assert read == [] and again.cached == again.items


def test_options_that_cannot_hold(root):
    root, _ = root
    with pytest.raises(ConfigError, match="data.spectrogram_dir and data.audio_input=waveform exclude each other"):
        load(root, spectrogram_dir="Audio-1004-SE")
    with pytest.raises(ConfigError, match="data.audio_input must be spectrogram or waveform, got 'wave'"):
        load(root, audio_input="wave")


def test_spectrograms_stay_the_default_where_both_are_written(tmp_path):
    write_ave(tmp_path / "ave", wavs=True)
    b = DATASETS["ave"](DataConfig(root=str(tmp_path / "ave"), image_size=16))
    assert b.shapes["audio"] == (257, 40) and b.encoders["audio"] == "resnet18_audio"


def test_train_end_to_end_on_waveforms(tmp_path):
    """``train`` on the waveform items without the ``pretrained`` extra: an MLP reads the samples
    (tests/models/test_conformer.py trains the Conformer config's HuBERT branch on them)."""
    write_ave(tmp_path / "ave", wavs=True, signal=True, wav_seconds=0.25, spectrograms=False)
    metrics = train_cli("ave", tmp_path / "ave", tmp_path / "run", "data.audio_input=waveform",
                        "model.encoder=audio:mlp,video:resnet18_video", "data.sample_rate=4000")
    assert metrics["epochs_run"] == 1 and metrics["config"]["data"]["audio_input"] == "waveform"
