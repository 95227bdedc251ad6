"""data/arrays.py piece by piece, each value computed by hand: the defaults of the two
entry points, label shapes and dtypes, the chunked NaN scan past one chunk, the split
arithmetic, which arrays are standardized, and the exact error messages (file or source
first). Written against the survivors of ``make mutation MODULES=arrays`` (docs/testing.md)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from mmbalance import DataError
from mmbalance.data import ArrayDataset, from_arrays, load_array_file, stratified_split

N = 60


def _modalities(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return {"audio": rng.normal(size=(n, 4)).astype(np.float32), "video": rng.normal(size=(n, 5, 3)).astype(np.float32)}


def _message(call):
    with pytest.raises(DataError) as info:
        call()
    return str(info.value)


# ------------------------------------------------------------------ defaults of the entry points

def test_load_array_file_defaults_and_passes_its_options(tmp_path):
    """Defaults seed=0, standardize=True, task=auto; seed and standardize reach the split and stats."""
    mods, labels = _modalities(), np.arange(N) % 3
    path = tmp_path / "d.npz"
    np.savez(path, label=labels, **mods)
    default = load_array_file(path)
    seed0 = from_arrays(mods, labels, seed=0)
    seed1 = from_arrays(mods, labels, seed=1)
    assert any(seed0.splits[s].tolist() != seed1.splits[s].tolist() for s in seed0.splits)  # the seed matters here
    for s in ("train", "val", "test"):
        assert default.splits[s].tolist() == seed0.splits[s].tolist()
        assert load_array_file(path, seed=1).splits[s].tolist() == seed1.splits[s].tolist()
    assert set(default.stats) == {"audio", "video"}
    assert load_array_file(path, standardize=False).stats == {}


def test_from_arrays_defaults(tmp_path):
    """Defaults standardize=True, seed=0, task=auto (float labels: regression), source 'data'."""
    mods = _modalities()
    data = from_arrays(mods, np.arange(N) % 3)
    assert set(data.stats) == {"audio", "video"}
    assert data.splits["test"].tolist() == from_arrays(mods, np.arange(N) % 3, seed=0).splits["test"].tolist()
    regression = from_arrays(mods, np.linspace(0.0, 1.0, N))
    assert regression.task == "regression" and regression.num_classes == 1
    assert _message(lambda: from_arrays(mods, -np.ones(N, int))).startswith("data: labels must lie in [0, C)")


def test_extras_are_kept():
    kind = np.arange(N) % 2
    data = from_arrays(_modalities(), np.arange(N) % 3, extras={"kind": kind})
    assert list(data.extras) == ["kind"] and data.extras["kind"] is kind


# ------------------------------------------------------------------ messages name the file first

def test_load_errors_start_with_the_path(tmp_path):
    mods = _modalities()
    missing = tmp_path / "missing.npz"
    assert _message(lambda: load_array_file(missing)) == f"data file {missing} does not exist"

    path = tmp_path / "nolabel.npz"
    np.savez(path, **mods)
    assert _message(lambda: load_array_file(path)) == f"{path}: no 'label' array (found: audio, video)"
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    assert _message(lambda: load_array_file(empty)) == f"{empty}: no 'label' array (found: nothing)"

    bad = tmp_path / "nan.npz"
    audio = mods["audio"].copy()
    audio[3, 0] = np.nan
    np.savez(bad, audio=audio, video=mods["video"], label=np.arange(N) % 3)
    assert _message(lambda: load_array_file(bad)) == (
        f"{bad}: modality 'audio' has NaN or Inf in 1 sample(s), first at index 3")
    neg = tmp_path / "neg.npz"
    np.savez(neg, label=np.where(np.arange(N) == 4, -1, np.arange(N) % 3), **mods)
    assert _message(lambda: load_array_file(neg)) == f"{neg}: labels must lie in [0, C), 'label'[4] = -1"
    split = tmp_path / "split.npz"
    np.savez(split, label=np.arange(N) % 3, split=np.array(["train"] * (N - 1) + ["tset"]), **mods)
    assert _message(lambda: load_array_file(split)).startswith(f"{split}: 'split' value 'tset' at index {N - 1}")

    truncated = tmp_path / "trunc.npz"
    np.savez(truncated, label=np.arange(N) % 3, **mods)
    truncated.write_bytes(truncated.read_bytes()[:200])
    assert _message(lambda: load_array_file(truncated)).startswith(
        f"data file {truncated} is not a readable .npz (BadZipFile: ")


def test_source_names_each_check():
    mods = _modalities()
    nan = dict(mods, audio=np.full((N, 4), np.nan, np.float32))
    assert _message(lambda: from_arrays(nan, np.arange(N) % 3, source="S")).startswith("S: modality 'audio' has NaN")
    assert _message(lambda: from_arrays(mods, -np.ones(N, int), source="S")).startswith("S: labels must lie")
    split = np.array(["train"] * N)
    assert _message(lambda: from_arrays(mods, np.arange(N) % 3, split, source="S")) == "S: the 'val' split is empty"


# ------------------------------------------------------------------ h5

def test_h5_suffixes_errors_and_missing_h5py(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    mods = _modalities()
    path = tmp_path / "d.hdf5"
    with h5py.File(path, "w") as f:
        for k, v in mods.items():
            f[k] = v
        f["label"] = np.arange(N) % 3
        f["split"] = np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10, dtype=h5py.string_dtype())
    data = load_array_file(path)
    assert data.splits["test"].tolist() == list(range(50, 60)) and data.labels.dtype == np.int64

    garbage = tmp_path / "g.h5"
    garbage.write_text("not hdf5")
    assert _message(lambda: load_array_file(garbage)).startswith(f"data file {garbage} is not a readable .h5 (")

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    assert _message(lambda: load_array_file(path)) == ("reading .h5 needs h5py, a dependency of mmbalance that is missing "
                                                     "here: pip install h5py")


# ------------------------------------------------------------------ labels

def test_label_column_shapes():
    mods = _modalities()
    column = (np.arange(N) % 3).reshape(N, 1)
    data = from_arrays(mods, column)
    assert data.labels.shape == (N,) and data.labels.tolist() == (np.arange(N) % 3).tolist()
    two = np.stack([np.arange(N) % 3, np.zeros(N, int)], 1)
    assert _message(lambda: from_arrays(mods, two)) == "data: 'label' must have shape (N,), got (60, 2)"


def test_label_task_dtype_and_count_rules():
    mods = _modalities()
    ints = np.arange(N) % 3
    reg = from_arrays(mods, ints, task="regression")  # integer labels may be regressed
    assert reg.task == "regression" and reg.num_classes == 1 and reg.labels.dtype == np.float32
    assert reg.labels.tolist() == ints.astype(float).tolist()
    assert from_arrays(mods, np.linspace(0, 1, N)).labels.dtype == np.float32

    whole = from_arrays(mods, ints.astype(np.float64), task="classification")  # 0.0, 1.0, 2.0: integers
    assert whole.labels.dtype == np.int64 and whole.num_classes == 3
    assert from_arrays(mods, ints).labels.dtype == np.int64

    binary = from_arrays(mods, np.arange(N) % 2)
    assert binary.task == "classification" and binary.num_classes == 2
    assert _message(lambda: from_arrays(mods, np.zeros(N, int))) == (
        "data: classification needs at least 2 classes, found 1")

    assert _message(lambda: from_arrays(mods, ints, task="ordinal")) == (
        "data.task must be auto, classification or regression, got 'ordinal'")
    assert _message(lambda: from_arrays(mods, np.array(["a"] * N))) == "data: 'label' must be numeric, got dtype <U1"
    nan = np.linspace(0, 1, N)
    nan[5] = np.nan
    assert _message(lambda: from_arrays(mods, nan)) == "data: 'label' has NaN or Inf at index 5"


# ------------------------------------------------------------------ the NaN scan over chunks of 4096 rows

def test_nan_scan_counts_and_locates_across_chunks():
    n = 5000  # two chunks: rows 0-4095 and 4096-4999
    other = np.zeros((n, 2), np.float32)
    labels = np.arange(n) % 2
    audio = np.zeros((n, 2), np.float32)
    audio[0, 1] = np.nan  # row 0 starts the first chunk
    audio[4500, 0] = np.inf  # in the second chunk
    audio[4600, :] = np.nan
    assert _message(lambda: from_arrays({"audio": audio, "other": other}, labels)) == (
        "data: modality 'audio' has NaN or Inf in 3 sample(s), first at index 0")
    late = np.zeros((n, 2), np.float32)
    late[4500, 0] = np.nan  # only past the first chunk
    assert _message(lambda: from_arrays({"audio": late, "other": other}, labels)) == (
        "data: modality 'audio' has NaN or Inf in 1 sample(s), first at index 4500")


# ------------------------------------------------------------------ splits

def test_automatic_split_is_stratified_per_class_and_plain_for_regression():
    mods = _modalities()
    labels = np.array([0] * 20 + [1] * 40)  # per class 70/15/15: 14/3/3 and 28/6/6
    for seed in range(5):
        data = from_arrays(mods, labels, seed=seed)
        got = {s: np.bincount(labels[idx], minlength=2).tolist() for s, idx in data.splits.items()}
        assert got == {"train": [14, 28], "val": [3, 6], "test": [3, 6]}, seed
    reg = from_arrays(mods, np.linspace(0.0, 1.0, N))  # one stratum of 60: 42/9/9
    assert {s: len(v) for s, v in reg.splits.items()} == {"train": 42, "val": 9, "test": 9}


def test_stratified_split_arithmetic():
    labels = np.array([0] * 20 + [1] * 2)  # class 1: max(1, round(1.4)) = 1 train, round(0.3) = 0 val, 1 test
    out = stratified_split(labels, seed=0)
    assert {s: np.bincount(labels[v], minlength=2).tolist() for s, v in out.items()} == {
        "train": [14, 1], "val": [3, 0], "test": [3, 1]}
    custom = stratified_split(np.zeros(20, int), seed=0, fractions=(0.6, 0.1, 0.3))
    assert {s: len(v) for s, v in custom.items()} == {"train": 12, "val": 2, "test": 6}
    assert sorted(np.concatenate(list(custom.values())).tolist()) == list(range(20))
    seven = stratified_split(np.zeros(7, int), seed=0)  # round(4.9) = 5, round(1.05) = 1, 1 left
    assert {s: len(v) for s, v in seven.items()} == {"train": 5, "val": 1, "test": 1}
    assert _message(lambda: stratified_split(np.zeros(5, int), seed=0)) == (  # 4 / round(0.75) = 1 / 0
        "too few samples (5) for a 70/15/15 split: the test split is empty")


# ------------------------------------------------------------------ what is standardized, and how

def test_only_float_vectors_and_sequences_are_standardized():
    rng = np.random.default_rng(1)
    mods = {"ints": rng.integers(0, 255, size=(N, 4)).astype(np.uint8),
            "images": rng.normal(size=(N, 2, 3, 3)).astype(np.float32),
            "vec": rng.normal(5.0, 2.0, size=(N, 4)),  # float64
            "seq": rng.normal(size=(N, 5, 3)).astype(np.float32)}
    data = from_arrays(mods, np.arange(N) % 3)
    assert set(data.stats) == {"vec", "seq"}
    inputs, label = ArrayDataset(data, "val")[0]
    assert {m: x.dtype for m, x in inputs.items()} == {m: torch.float32 for m in mods}  # float64 and uint8 too
    row = data.splits["val"][0]
    assert inputs["ints"].tolist() == mods["ints"][row].astype(np.float32).tolist()
    assert label.item() == row % 3


def test_constant_feature_gets_std_one():
    audio = np.random.default_rng(2).normal(size=(N, 3)).astype(np.float32)
    audio[:, 1] = 7.0
    data = from_arrays({"audio": audio, "video": audio.copy()}, np.arange(N) % 3)
    mean, std = data.stats["audio"]
    assert mean[1] == 7.0 and std[1] == 1.0 and std.dtype == np.float32
    assert np.isfinite(std).all() and (std[[0, 2]] != 1.0).all()


@pytest.mark.parametrize("bad", [np.array([["a", "b"]] * N), np.array([[1 + 2j, 0j]] * N)])
def test_a_non_numeric_modality_is_refused_by_name(bad):
    """Strings (or complex numbers, which no encoder takes) in a modality are refused at load,
    naming the modality and its dtype, instead of failing later inside the model."""
    mods = {**_modalities(), "text": bad}
    message = _message(lambda: from_arrays(mods, np.arange(N) % 3, source="mine.npz"))
    assert message == (f"mine.npz: modality 'text' holds {bad.dtype} values; a modality must be a numeric "
                       "array (bool, integer or float)")


def test_batched_read_equals_the_row_by_row_read_bit_for_bit():
    """``ArrayDataset.__getitems__`` (one block per modality per batch, what DataLoader
    calls) gives exactly the items of ``__getitem__``: same values, dtypes and shapes, for
    standardized and raw modalities, integer and float labels, and any order of rows."""
    import torch
    from torch.utils.data import DataLoader

    from mmbalance.data.arrays import ArrayDataset, collate, from_arrays

    rng = np.random.default_rng(3)
    n = 40
    mods = {"a": rng.normal(3.0, 2.0, (n, 5)), "b": rng.normal(size=(n, 2, 3)).astype(np.float32)}
    for labels in (np.arange(n) % 3, rng.normal(size=n).astype(np.float32)):
        task = "classification" if labels.dtype.kind == "i" else "regression"
        data = from_arrays(mods, labels, np.array(["train"] * 30 + ["val"] * 5 + ["test"] * 5), task=task)
        ds = ArrayDataset(data, "train")
        positions = [7, 0, 29, 3, 3, 12]
        batched = ds.__getitems__(positions)
        assert len(batched) == len(positions)
        for (x, y), p in zip(batched, positions):
            x0, y0 = ds[p]
            assert y.dtype == y0.dtype and torch.equal(y, y0)
            for m in mods:
                assert x[m].dtype == x0[m].dtype == torch.float32 and torch.equal(x[m], x0[m])
        # and through a DataLoader (which calls __getitems__): the batches of the row-by-row read
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        fast = list(DataLoader(ds, batch_size=8, shuffle=True, generator=g1))
        class RowByRow(torch.utils.data.Dataset):  # the same dataset without __getitems__
            __len__, __getitem__ = (lambda self: len(ds)), (lambda self, i: ds[i])

        slow = list(DataLoader(RowByRow(), batch_size=8, shuffle=True, generator=g2))
        assert len(fast) == len(slow) == 4
        for (xf, yf), (xs, ys) in zip(fast, slow):
            assert torch.equal(yf, ys) and all(torch.equal(xf[m], xs[m]) for m in mods)
        # the training loaders' collate hands the stacked blocks over: the same batches,
        # dtypes, shapes and structure as default_collate of the rows
        g3 = torch.Generator().manual_seed(5)
        blocks = list(DataLoader(ds, batch_size=8, shuffle=True, generator=g3, collate_fn=collate))
        assert len(blocks) == 4
        for (xb, yb), (xs, ys), whole in zip(blocks, slow, blocks):
            assert type(whole) is list and set(xb) == set(mods)
            assert yb.dtype == ys.dtype and yb.shape == ys.shape and torch.equal(yb, ys)
            for m in mods:
                assert xb[m].dtype == xs[m].dtype and xb[m].shape == xs[m].shape and xb[m].is_contiguous()
                assert torch.equal(xb[m], xs[m])
        assert collate([({"a": torch.ones(2)}, torch.tensor(1))])[0]["a"].shape == (1, 2)  # other items
