"""Dataset pickles never run code: the fixtures in the real layouts still load,
at every pickle protocol; pickles that would run a command are refused by every reader, with
one line naming the file and the global, and the command never runs."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import subprocess

import numpy as np
import pytest

from mmbalance.cli import main
from mmbalance.config import DataConfig
from mmbalance.data import DATASETS, safe_pickle
from mmbalance.data.audio import load_pickled_array
from mmbalance.errors import DataError
from mmbalance.testing.fixtures import write_affect, write_ave, write_cremad, write_ucf51

from ._common import FAST


class Payload:
    """Unpickling it calls ``fn(*args)``: what a malicious dataset pickle does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux: how pickle names os.system


def payloads(marker):
    """name -> (object whose unpickling creates ``marker``, the global the pickle names)."""
    touch = f"touch {marker}"
    return {
        "os.system": (Payload(os.system, touch), SYSTEM),
        "eval": (Payload(builtins.eval, f"__import__('os').system({touch!r})"), "builtins.eval"),
        "exec": (Payload(builtins.exec, f"import os; os.system({touch!r})"), "builtins.exec"),
        "Popen": (Payload(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        "nested": ({"audio": np.zeros((3, 2), np.float32), "more": [np.arange(3), Payload(os.system, touch)]}, SYSTEM),
    }


@pytest.mark.parametrize("name", ["os.system", "eval", "exec", "Popen", "nested"])
def test_the_payloads_do_run_under_plain_pickle(tmp_path, name):
    """Without the restricted reader each payload creates the marker (so the tests below
    would see it if a reader still used pickle.load)."""
    marker = tmp_path / "MARKER"
    value = pickle.loads(pickle.dumps(payloads(marker)[name][0]))
    if isinstance(value, subprocess.Popen):
        value.wait()
    assert marker.exists()


# ------------------------------------------------------------------ every reader refuses

def _ave(root, blob):
    rows = write_ave(root)
    path = root / "Audio-1004-SE" / f"{rows['train'][0][0]}.pkl"  # read while building the bundle
    path.write_bytes(blob)
    return path, lambda: DATASETS["ave"](DataConfig(root=str(root), image_size=16))


def _ucf_table(root, blob):
    write_ucf51(root)
    path = root / "UCF_fps1_audio16000.pkl"
    path.write_bytes(blob)
    return path, lambda: DATASETS["ucf51"](DataConfig(root=str(root), image_size=16))


def _class_change(root, blob):
    write_ucf51(root)
    path = root / "class_change.pkl"
    path.write_bytes(blob)
    return path, lambda: DATASETS["ucf51"](DataConfig(root=str(root), image_size=16))


def _mosi(root, blob):
    path = root / "mosi_data.pkl"
    write_affect(path)
    path.write_bytes(blob)
    return path, lambda: DATASETS["mosi"](DataConfig(root=str(root)))


def _cremad_folds(root, blob):
    write_cremad(root, train_per_class=1, test_per_class=1, frames=1)
    path = root / "data_splits_VALV.pkl"
    path.write_bytes(blob)
    return path, lambda: DATASETS["cremad"](DataConfig(root=str(root), image_size=16, fold=1))


READERS = {"ave spectrogram": _ave, "ucf table": _ucf_table, "class_change.pkl": _class_change,
           "mosi table": _mosi, "cremad folds": _cremad_folds}
#: how each reader's error names its file
WHAT = {"ave spectrogram": "spectrogram file", "cremad folds": "fold file"}


@pytest.mark.parametrize("payload", ["os.system", "eval", "exec", "Popen", "nested"])
@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_refuses_a_pickle_that_runs_code(tmp_path, reader, payload):
    marker = tmp_path / "MARKER"
    value, name = payloads(marker)[payload]
    path, load = READERS[reader](tmp_path / "data", pickle.dumps(value))
    with pytest.raises(DataError) as caught:
        load()
    assert str(caught.value) == (f"{WHAT.get(reader, 'data file')} {path} wants to load {name}, which is not "
                                 "allowed in a dataset pickle (only numpy arrays and builtin containers and scalars)")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_nested_payload_is_refused_at_every_protocol(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    with pytest.raises(DataError, match=rf"data file t.pkl wants to load {SYSTEM},"):
        safe_pickle.loads(pickle.dumps(payloads(marker)["nested"][0], protocol=protocol), "t.pkl")
    assert not marker.exists()


def test_the_cli_refuses_it_in_one_line_and_runs_nothing(tmp_path, capsys):
    """A test-split spectrogram (read by no loader before training: the data check reads it)."""
    marker = tmp_path / "MARKER"
    rows = write_ave(tmp_path / "ave")
    bad = tmp_path / "ave" / "Audio-1004-SE" / f"{rows['test'][0][0]}.pkl"
    bad.write_bytes(pickle.dumps(payloads(marker)["nested"][0]))
    rc = main(["train", "--data", "ave", "--method", "joint", "--set", f"data.root={tmp_path / 'ave'}", *FAST,
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err == (f"error: spectrogram file {bad} wants to load {SYSTEM}, which is not allowed in a dataset "
                   "pickle (only numpy arrays and builtin containers and scalars)\n")
    assert not marker.exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ what datasets hold still loads

@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_scalars_and_containers_load_at_every_protocol(protocol):
    value = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "i64": np.arange(3), "f64": np.ones(2),
             "str": np.array(["ab", "c"]), "obj": np.array(["a", 1, None], dtype=object),
             "fortran": np.asfortranarray(np.arange(4.0).reshape(2, 2)), "strided": np.arange(8.0)[::2],
             "scalars": [np.float32(1.5), np.int64(-2), np.bool_(True)], "set": {1, 2}, "frozen": frozenset("x"),
             "complex": 1 + 2j, "bytes": b"\x00\xff", "bytearray": bytearray(b"ab"), "tuple": (1, "a", None),
             "empty": np.zeros((0, 3))}
    back = safe_pickle.loads(pickle.dumps(value, protocol=protocol))
    assert back.keys() == value.keys()
    for key in ("f32", "i64", "f64", "str", "fortran", "strided", "empty"):
        assert back[key].dtype == value[key].dtype and np.array_equal(back[key], value[key]), key
    assert list(back["obj"]) == ["a", 1, None] and back["scalars"] == value["scalars"]
    assert type(back["scalars"][0]) is np.float32
    assert [back[k] for k in ("set", "frozen", "complex", "bytes", "bytearray", "tuple")] == \
        [value[k] for k in ("set", "frozen", "complex", "bytes", "bytearray", "tuple")]


def test_a_numpy_1_pickle_loads(tmp_path):
    """numpy 1.x wrote ``numpy.core.multiarray``; numpy 2 reads it as ``numpy._core``."""
    blob = pickle.dumps(np.arange(4, dtype=np.float32), protocol=2)
    assert b"numpy._core.multiarray" in blob
    path = tmp_path / "old.pkl"
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert np.array_equal(load_pickled_array(path, "spectrogram", ndim=1), np.arange(4, dtype=np.float32))


def test_a_refused_global_names_itself_even_among_allowed_ones(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"a": np.zeros(2), "b": Payload(getattr, np.zeros(1), "tofile")}))
    with pytest.raises(DataError, match=rf"data file {path} wants to load builtins.getattr,"):
        safe_pickle.load(path)
    with open(path, "rb") as handle:  # a file object: named by its name
        with pytest.raises(DataError, match=rf"data file {path} wants to load builtins.getattr,"):
            safe_pickle.load(handle)


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_ave_spectrograms_and_the_ucf_table_at_every_protocol_load_through_the_datasets(tmp_path, protocol):
    rows = write_ave(tmp_path / "ave")
    for path in (tmp_path / "ave" / "Audio-1004-SE").iterdir():
        array = pickle.loads(path.read_bytes())
        path.write_bytes(pickle.dumps(array, protocol=protocol))
    bundle = DATASETS["ave"](DataConfig(root=str(tmp_path / "ave"), image_size=16))
    assert [len(bundle.train), len(bundle.val), len(bundle.test)] == [len(rows[s]) for s in ("train", "val", "test")]
    first = tmp_path / "ave" / "Audio-1004-SE" / f"{rows['test'][0][0]}.pkl"
    assert np.array_equal(bundle.test[0][0]["audio"].numpy(), pickle.loads(first.read_bytes()))
    write_ucf51(tmp_path / "ucf")
    for name in ("UCF_fps1_audio16000.pkl", "class_change.pkl"):
        path = tmp_path / "ucf" / name
        path.write_bytes(pickle.dumps(pickle.loads(path.read_bytes()), protocol=protocol))
    ucf = DATASETS["ucf51"](DataConfig(root=str(tmp_path / "ucf"), image_size=16))
    # 2 classes x 2 clips x 3 groups: groups 1-2 train+val (8 clips), group 3 test (4 clips)
    assert (len(ucf.train) + len(ucf.val), len(ucf.test), ucf.num_classes) == (8, 4, 2)


def test_every_fixture_writer_loads_through_its_dataset(tmp_path):
    ave = write_ave(tmp_path / "ave")
    b = DATASETS["ave"](DataConfig(root=str(tmp_path / "ave"), image_size=16))
    assert [len(b.train), len(b.val), len(b.test)] == [len(ave[s]) for s in ("train", "val", "test")]
    write_ucf51(tmp_path / "ucf")
    assert len(DATASETS["ucf51"](DataConfig(root=str(tmp_path / "ucf"), image_size=16)).test) == 4
    for name, file in (("mosi", "mosi_data.pkl"), ("mosei", "mosei_senti_data.pkl")):
        write_affect(tmp_path / name / file)
        b = DATASETS[name](DataConfig(root=str(tmp_path / name)))
        # affect_table: 8/4/4 samples, one train sample with all-zero text dropped
        assert [len(b.train), len(b.val), len(b.test)] == [7, 4, 4]
    rows = write_cremad(tmp_path / "cremad", train_per_class=1, test_per_class=1, frames=1)
    folds = json.loads((tmp_path / "cremad" / "data_splits_VALV.pkl").read_text())
    (tmp_path / "cremad" / "data_splits_VALV.pkl").write_bytes(pickle.dumps(folds))  # the folds as a real pickle
    b = DATASETS["cremad"](DataConfig(root=str(tmp_path / "cremad"), image_size=16, fold=1))
    # write_cremad's fold: all train clips but the last two, those two as val, the test clips
    assert [len(b.train), len(b.val), len(b.test)] == [len(rows["train"]) - 2, 2, len(rows["test"])]
