"""Users' .npz/.h5 files: loading, splits, standardization, and every bad-input case, each
refused with one line naming the culprit (DataError from Python, exit 2 from the CLI)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mmbalance import DataError
from mmbalance.cli import main
from mmbalance.data import load_array_file

RNG = np.random.default_rng(0)
N = 60


def _arrays(**changes):
    arrays = {"audio": RNG.normal(3.0, 2.0, size=(N, 4)).astype(np.float32),
              "video": RNG.normal(size=(N, 5, 3)).astype(np.float32),
              "label": np.arange(N) % 3}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def _save(tmp_path, name="d.npz", **changes):
    path = tmp_path / name
    np.savez(path, **_arrays(**changes))
    return path


def test_loads_splits_and_standardizes_with_train_stats(tmp_path):
    data = load_array_file(_save(tmp_path), seed=1)
    assert data.task == "classification" and data.num_classes == 3
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 42, "val": 9, "test": 9}  # 70/15/15 of 20 per class, stratified
    for cls in range(3):
        assert (data.labels[data.splits["val"]] == cls).sum() == 3
    train = data.modalities["audio"][data.splits["train"]]
    mean, std = data.stats["audio"]
    np.testing.assert_allclose(mean, train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, train.std(0), rtol=1e-4)
    assert data.stats["video"][0].shape == (3,)  # sequences: per feature over samples and time
    assert load_array_file(_save(tmp_path), seed=1).splits["test"].tolist() == data.splits["test"].tolist()


def test_given_split_float_labels_regression_and_h5_lazy(tmp_path):
    h5py = pytest.importorskip("h5py")
    split = np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        for k, v in _arrays(label=RNG.normal(size=N).astype(np.float32)).items():
            f[k] = v
        f["split"] = split.astype("S5")
    data = load_array_file(path, standardize=False)
    assert data.task == "regression" and data.num_classes == 1
    assert isinstance(data.modalities["audio"], h5py.Dataset)  # read lazily, row by row
    assert data.splits["val"].tolist() == list(range(40, 50))


CASES = [
    ("truncated", "not a readable .npz"),
    ("no_label", "no 'label' array"),
    ("one_modality", "at least 2 modality arrays"),
    ("rows", "modality 'video' has 59 rows but 'label' has 60"),
    ("negative", "'label'[7] = -1"),
    ("fractional", "must be integers, 'label'[2] = 0.5"),
    ("split_value", "'split' value 'tset' at index 5 is unknown"),
    ("split_empty", "the 'val' split is empty"),
    ("absent_class", "class(es) [2] have no sample in the train split"),
    ("nan", "modality 'audio' has NaN or Inf in 2 sample(s), first at index 4"),
    ("inf", "modality 'video' has NaN or Inf in 1 sample(s), first at index 9"),
]


def _bad_file(tmp_path, case):
    if case == "truncated":
        path = _save(tmp_path)
        path.write_bytes(path.read_bytes()[:200])
        return path
    if case == "no_label":
        return _save(tmp_path, label=None)
    if case == "one_modality":
        return _save(tmp_path, video=None)
    if case == "rows":
        return _save(tmp_path, video=RNG.normal(size=(N - 1, 5, 3)).astype(np.float32))
    if case == "negative":
        labels = np.arange(N) % 3
        labels[7] = -1
        return _save(tmp_path, label=labels)
    if case == "fractional":
        return _save(tmp_path, label=np.where(np.arange(N) == 2, 0.5, np.arange(N) % 3))
    split = np.array((["train"] * 4 + ["val", "test"]) * 10)
    if case == "split_value":
        split[5] = "tset"
        return _save(tmp_path, split=split)
    if case == "split_empty":
        return _save(tmp_path, split=np.where(split == "val", "train", split))
    if case == "absent_class":
        labels = np.arange(N) % 3
        labels[(labels == 2) & (split == "train")] = 1
        return _save(tmp_path, label=labels, split=split)
    if case == "nan":
        audio = RNG.normal(size=(N, 4)).astype(np.float32)
        audio[4, 1] = audio[30, 0] = np.nan
        return _save(tmp_path, audio=audio)
    video = RNG.normal(size=(N, 5, 3)).astype(np.float32)
    video[9, 2, 2] = np.inf
    return _save(tmp_path, video=video)


@pytest.mark.parametrize("case,message", CASES)
def test_bad_file_raises_data_error(tmp_path, case, message):
    path = _bad_file(tmp_path, case)
    task = "classification" if case == "fractional" else "auto"  # float labels mean regression otherwise
    with pytest.raises(DataError) as info:
        load_array_file(path, task=task)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case,message", CASES)
def test_bad_file_from_cli_exit_2(tmp_path, case, message, capsys):
    path = _bad_file(tmp_path, case)
    task = ["--set", "data.task=classification"] if case == "fractional" else []
    assert main(["train", "--data", str(path), "--method", "joint", *task, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_unreadable_file(tmp_path):
    path = tmp_path / "d.npz"
    path.write_text("not a zip at all")
    with pytest.raises(DataError, match=f"{path} is not a readable .npz"):
        load_array_file(path)
    with pytest.raises(DataError, match="must end in .npz or .h5"):
        load_array_file(tmp_path / "x.csv") if (tmp_path / "x.csv").write_text("a") else None


def test_cli_subprocess_no_traceback(tmp_path):
    path = _bad_file(tmp_path, "rows")
    proc = subprocess.run([sys.executable, "-m", "mmbalance", "train", "--data", str(path), "--method", "mcr",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {path}: modality 'video' has 59 rows but 'label' has 60"]


def _shifted_file(tmp_path):
    """Train rows centred at 3 (scale 2) per feature, val/test rows scaled x3 and shifted by +5: standardizing val/test with their own statistics, or not at all, is visible."""
    rng = np.random.default_rng(3)
    split = np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20)
    scale = np.array([1.0, 2.0, 5.0, 0.5], np.float32)
    audio = rng.normal(3.0, 2.0, size=(120, 4)).astype(np.float32) * scale
    video = (rng.normal(size=(120, 5, 3)) * [1.0, 10.0, 0.1] + [-4.0, 0.0, 7.0]).astype(np.float32)
    for arr in (audio, video):
        arr[80:] = arr[80:] * 3 + 5
    path = tmp_path / "shifted.npz"
    np.savez(path, audio=audio, video=video, label=np.arange(120) % 3, split=split)
    return path, {"audio": audio, "video": video}, split


def _feature_axes(x):
    return tuple(range(x.ndim - 1))  # (N, D): over rows; (N, T, D): over rows and time


def test_model_receives_train_standardized_inputs(tmp_path, monkeypatch):
    """The values the model is fed, through the product's own path (build_data, the
    training loaders and a real training epoch): per feature mean 0 / std 1 on train, and
    val/test transformed with the train statistics, not their own."""
    from mmbalance.config import build_config
    from mmbalance.methods import get_method
    from mmbalance.models import MultimodalModel
    from mmbalance.training import train
    from mmbalance.training.build import build_data, loaders

    path, raw, split = _shifted_file(tmp_path)
    cfg = build_config("joint", str(path), {"trainer.max_epochs": 1, "trainer.progress": False,
                                            "data.batch_size": 16, "model.feature_dim": 8, "model.hidden": 8},
                       get_method("joint").Hyperparameters)
    _, dls = loaders(build_data(cfg), cfg, cfg.seed)
    for name, dl in zip(("train", "val", "test"), dls):
        got = {m: torch.cat([batch[0][m] for batch in dl]) for m in raw}
        for m, arr in raw.items():
            train_rows = arr[split == "train"].astype(np.float64)
            mean, std = train_rows.mean(_feature_axes(arr)), train_rows.std(_feature_axes(arr))
            rows = arr[split == name]
            if name == "train":  # shuffled: compare the statistics
                x = got[m].double().numpy()
                np.testing.assert_allclose(x.mean(_feature_axes(x)), 0.0, atol=1e-5)
                np.testing.assert_allclose(x.std(_feature_axes(x)), 1.0, atol=1e-4)
            else:  # in order: compare the values; train statistics, so the +5 shift shows
                np.testing.assert_allclose(got[m].numpy(), (rows - mean) / std, rtol=1e-4, atol=1e-4)
                assert np.abs(got[m].numpy().mean(_feature_axes(arr))).max() > 1.0, (name, m)  # not own stats

    seen = []
    forward = MultimodalModel.forward

    def recording(self, inputs):
        if self.training:
            seen.append({m: v.detach().clone() for m, v in inputs.items()})
        return forward(self, inputs)

    monkeypatch.setattr(MultimodalModel, "forward", recording)
    train(cfg, tmp_path / "run")
    for m in raw:
        x = torch.cat([s[m] for s in seen]).double().numpy()
        assert len(x) == 80
        np.testing.assert_allclose(x.mean(_feature_axes(x)), 0.0, atol=1e-5)
        np.testing.assert_allclose(x.std(_feature_axes(x)), 1.0, atol=1e-4)
