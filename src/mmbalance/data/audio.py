"""Audio for the real datasets: WAV reading, resampling, tiling and the paper's log spectrogram.

Paper, Appendix A.2 and the authors' loaders: audio at 22.05 kHz (CREMA-D) or 16 kHz
(AVE, UCF), 3 s, values clipped to [-1, 1], STFT with a 512-sample periodic Hann window and
a hop of 353 samples, ``log(|X| + 1e-7)``. The authors call ``librosa.stft`` (centred
frames, zero padding since librosa 0.10); :func:`log_spectrogram` computes the same thing
with ``torch.stft``, so a clip of L samples gives ``(257, 1 + L // 353)``.
"""

from __future__ import annotations

import math
import pickle
import warnings
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

N_FFT = 512
HOP = 353
LOG_EPS = 1e-7


def read_wav(path: str | Path) -> Tuple[np.ndarray, int]:
    """Reads a WAV file (PCM 8/16/24/32-bit or float) as mono float32 in [-1, 1].

    Channels are averaged, as ``librosa.load`` does.

    Returns:
        (L,) float32 samples and the sample rate in Hz.

    Raises:
        DataError: the file is missing, is not a readable WAV, or holds no samples.
    """
    from scipy.io import wavfile

    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file {path} does not exist (expected a WAV file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            rate, data = wavfile.read(path)
    except Exception as exc:  # scipy raises many types (even UnboundLocalError) on a broken header
        raise DataError(f"audio file {path} is not a readable WAV file ({type(exc).__name__}: {exc})") from None
    data = _pcm_to_float(np.asarray(data))
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.size == 0:
        raise DataError(f"audio file {path} holds no samples (expected at least one)")
    return data.astype(np.float32), int(rate)


def _pcm_to_float(data: np.ndarray) -> np.ndarray:
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype.kind == "i":
        return data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    return data.astype(np.float32)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``) from ``rate_in`` to ``rate_out``.

    Args:
        wave: (L,) samples.

    Returns:
        (ceil(L * rate_out / rate_in),) float32 samples.
    """
    if rate_in == rate_out:
        return wave.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    return resample_poly(wave, rate_out // g, rate_in // g).astype(np.float32)


def tile_to(wave: np.ndarray, length: int) -> np.ndarray:
    """Repeats ``wave`` end to end until it has ``length`` samples, then cuts it there.

    The authors tile three times (``np.tile(x, 3)[:3 * rate]``), which leaves clips under
    one second shorter than 3 s; tiling as often as needed gives every clip the same length
    and is identical for clips of one second or more.
    """
    reps = max(1, math.ceil(length / len(wave)))
    return np.tile(wave, reps)[:length]


def log_spectrogram(wave: Tensor) -> Tensor:
    """``log(|STFT(wave)| + 1e-7)`` with n_fft 512, hop 353, periodic Hann window, centred.

    Args:
        wave: (L,) samples.

    Returns:
        (257, 1 + L // 353) float32 log magnitudes.
    """
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32)
    spec = torch.stft(wave.float(), n_fft=N_FFT, hop_length=HOP, window=window, center=True,
                      pad_mode="constant", return_complex=True)
    return torch.log(spec.abs() + LOG_EPS)


def spectrogram_shape(rate: int, seconds: float) -> Tuple[int, int]:
    """The (frequency, time) shape :func:`waveform_spectrogram` gives for ``seconds`` at ``rate``."""
    return N_FFT // 2 + 1, 1 + int(round(rate * seconds)) // HOP


def fixed_waveform(wave: np.ndarray, rate: int, target_rate: int, seconds: float) -> Tensor:
    """Resamples to ``target_rate``, tiles or cuts to ``seconds``, clips to [-1, 1].

    Args:
        wave: (L,) samples at ``rate``.

    Returns:
        (round(target_rate * seconds),) float32 waveform.
    """
    wave = resample(wave, rate, target_rate)
    wave = np.clip(tile_to(wave, int(round(target_rate * seconds))), -1.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))


def waveform_spectrogram(wave: np.ndarray, rate: int, target_rate: int, seconds: float) -> Tensor:
    """:func:`log_spectrogram` of :func:`fixed_waveform`.

    Returns:
        (257, 1 + round(target_rate * seconds) // 353) log spectrogram.
    """
    return log_spectrogram(fixed_waveform(wave, rate, target_rate, seconds))


def wav_spectrogram(path: str | Path, target_rate: int, seconds: float) -> Tensor:
    """:func:`waveform_spectrogram` of the WAV file at ``path`` (CREMA-D's preprocessing)."""
    wave, rate = read_wav(path)
    return waveform_spectrogram(wave, rate, target_rate, seconds)


def load_pickled_array(path: str | Path, what: str, ndim: int = 2) -> np.ndarray:
    """Reads a pickled numeric array (a precomputed spectrogram, AVE's ``<id>.pkl``).

    Raises:
        DataError: missing, not a pickle, not a numeric ``ndim``-D array, or not finite.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist (expected a pickled {ndim}-D array)")
    from . import safe_pickle

    try:
        value = safe_pickle.load(path, f"{what} file")
        array = np.asarray(value, dtype=np.float32)
    except safe_pickle.UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            ImportError, IndexError) as exc:
        raise DataError(f"{what} file {path} is not a readable pickled array ({type(exc).__name__}: {exc})") from None
    if array.ndim != ndim:
        raise DataError(f"{what} file {path} holds an array of shape {array.shape}; expected {ndim}-D")
    if not np.isfinite(array).all():
        raise DataError(f"{what} file {path} holds NaN or Inf values")
    return array
