"""Audio and frame preprocessing against hand computation (numpy FFT, hand-made WAVs)."""

from __future__ import annotations

import pickle
import wave

import numpy as np
import pytest
import torch

from mmbalance.data.audio import (HOP, N_FFT, load_pickled_array, log_spectrogram, read_wav, resample,
                                  spectrogram_shape, tile_to, wav_spectrogram, waveform_spectrogram)
from mmbalance.testing.fixtures import jpeg_bytes, write_wav
from mmbalance.data.vision import FrameTransform, load_image, random_crop_box
from mmbalance.errors import DataError

from ._common import normalized_grey


def _numpy_log_stft(x: np.ndarray) -> np.ndarray:
    """Centred STFT by hand: zero-pad n_fft/2 each side, periodic Hann, rfft per frame."""
    pad = np.pad(x.astype(np.float64), N_FFT // 2)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = [pad[t * HOP:t * HOP + N_FFT] * window for t in range(1 + len(x) // HOP)]
    return np.log(np.abs(np.fft.rfft(np.stack(frames), axis=1)).T + 1e-7)


def _close_magnitudes(got: torch.Tensor, expected: np.ndarray) -> bool:
    """Compares |X| (float32 round-off makes the log of near-silent bins differ a lot)."""
    mag, ref = np.exp(got.numpy().astype(np.float64)), np.exp(expected)
    return bool(np.allclose(mag, ref, atol=1e-4 * ref.max(), rtol=1e-3))


def test_log_spectrogram_matches_numpy_stft():
    x = np.random.default_rng(0).uniform(-1, 1, 2000).astype(np.float32)
    got = log_spectrogram(torch.from_numpy(x))
    assert got.shape == (257, 1 + 2000 // 353) == (257, 6)
    assert _close_magnitudes(got, _numpy_log_stft(x))


def test_paper_spectrogram_shape():
    # 3 s at 22.05 kHz: 66150 samples, 1 + 66150 // 353 = 188 frames (OGM-GE's 257 x 188)
    assert spectrogram_shape(22050, 3.0) == (257, 188)
    assert spectrogram_shape(16000, 3.0) == (257, 136)


def test_read_wav_scales_pcm_and_averages_channels(tmp_path):
    samples = write_wav(tmp_path / "a.wav", seconds=0.01)
    got, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and np.allclose(got, samples / 32768.0)
    stereo = np.array([[1000, 3000], [-2000, 0]], dtype=np.int16)
    with wave.open(str(tmp_path / "s.wav"), "wb") as out:
        out.setnchannels(2), out.setsampwidth(2), out.setframerate(8000), out.writeframes(stereo.tobytes())
    got, _ = read_wav(tmp_path / "s.wav")
    assert np.allclose(got, [2000 / 32768, -1000 / 32768])


def test_resample_and_tile():
    assert len(resample(np.zeros(8000, np.float32), 16000, 22050)) == 11025
    assert tile_to(np.array([1, 2, 3]), 7).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert tile_to(np.arange(10), 4).tolist() == [0, 1, 2, 3]


def test_half_second_wav_is_tiled_to_three_seconds(tmp_path):
    samples = write_wav(tmp_path / "a.wav", seconds=0.5)
    got = wav_spectrogram(tmp_path / "a.wav", 22050, 3.0)
    wave22 = resample(samples / 32768.0, 16000, 22050)  # 11025 samples, tiled 6 times
    expected = _numpy_log_stft(np.clip(np.tile(wave22, 6)[:66150], -1, 1))
    assert got.shape == (257, 188) and _close_magnitudes(got, expected)
    assert torch.equal(waveform_spectrogram((samples / 32768.0).astype(np.float32), 16000, 22050, 3.0), got)


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"not audio at all"])
def test_bad_wav_names_the_file(tmp_path, content):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.wav"):
        read_wav(path)
    with pytest.raises(DataError, match="missing.wav.*does not exist"):
        read_wav(tmp_path / "missing.wav")


def test_pickled_array_checks(tmp_path):
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(np.ones((3, 4))))
    assert load_pickled_array(tmp_path / "ok.pkl", "spectrogram").shape == (3, 4)
    (tmp_path / "junk.pkl").write_bytes(b"\x00garbage")
    (tmp_path / "flat.pkl").write_bytes(pickle.dumps(np.ones(5)))
    with pytest.raises(DataError, match="junk.pkl is not a readable pickled array"):
        load_pickled_array(tmp_path / "junk.pkl", "spectrogram")
    with pytest.raises(DataError, match=r"flat.pkl holds an array of shape \(5,\); expected 2-D"):
        load_pickled_array(tmp_path / "flat.pkl", "spectrogram")


def test_eval_transform_centre_crops_normalizes_and_pads(tmp_path):
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"{k}.jpg")
        paths[-1].write_bytes(jpeg_bytes(30 + 40 * k, size=(20, 40)))
    frames = [load_image(p) for p in paths]
    out = FrameTransform(8, train=False)(frames, num_frames=3)
    assert out.shape == (3, 3, 8, 8)
    for k in range(2):
        assert torch.allclose(out[:, k].mean(dim=(1, 2)), normalized_grey(k), atol=0.05)
    assert torch.count_nonzero(out[:, 2]) == 0  # a missing third frame stays zero


def test_train_transform_crops_every_frame_alike():
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 40).expand(3, 30, 40).contiguous()
    out = FrameTransform(16, train=True)([ramp, ramp.clone(), ramp.clone()], num_frames=3)
    assert out.shape == (3, 3, 16, 16)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_random_crop_box_stays_inside_with_paper_scale():
    torch.manual_seed(1)
    for _ in range(200):
        top, left, h, w = random_crop_box(30, 50)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50
        assert h * w >= 0.08 * 30 * 50 * 0.8  # area drawn from [0.08, 1] (rounding aside)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="x.jpg is not a readable image"):
        load_image(tmp_path / "x.jpg")
