"""The run folder (``engine/rundir.py``) without a training run: file names, atomic writes
(temporary name, flush and fsync before the rename), the method's entries of a checkpoint,
stage links and keys, config/inputs/metrics round trips, the exact messages for a missing,
unfinished or misnamed run, per-sample predictions and which checkpoint a run is scored
from. Each expectation is written out by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mmbalance import MLPEncoder, MultimodalModel
from mmbalance.engine import rundir as rd
from mmbalance.engine.rundir import METHOD_PREFIX, RunDir, atomic_write_bytes, atomic_write_text, method_state
from mmbalance.errors import DataError
from mmbalance.methods import Joint, Unimodal


def _method(cls=Joint, **hp):
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 4, hidden=6, layers=1)}, 3)
    return cls(model, cls.Hyperparameters(**hp))


def _loader():
    gen = torch.Generator().manual_seed(1)
    xa, xv = torch.randn(5, 5, generator=gen), torch.randn(5, 3, generator=gen)
    labels = torch.tensor([0, 1, 2, 1, 0])
    return [({"a": xa[:3], "v": xv[:3]}, labels[:3]), ({"a": xa[3:], "v": xv[3:]}, labels[3:])], xa, xv, labels


# atomic writes


def test_atomic_write_goes_through_a_flushed_and_synced_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size))  # flushed: every byte is in the file
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src), Path(dst), path.read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(path, b"0123456789")
    tmp = tmp_path / f".out.bin.tmp{os.getpid()}"
    assert events == [("fsync", 10), ("replace", tmp, path, b"old")]
    assert path.read_bytes() == b"0123456789" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_write_text_takes_a_string_path_and_writes_utf8(tmp_path):
    atomic_write_text(str(tmp_path / "t.txt"), "größe µ")
    assert (tmp_path / "t.txt").read_bytes() == "größe µ".encode("utf-8")


# checkpoints


class Extra:
    """An object a training checkpoint may hold besides tensors (callback or loop state)."""

    def __init__(self, value):
        self.value = value


def test_method_state_keeps_the_method_entries_without_their_prefix(tmp_path):
    assert METHOD_PREFIX == "method."
    ckpt = tmp_path / "x.ckpt"
    tree = {"state_dict": {"method.model.w": torch.ones(2), "method.weights": torch.zeros(1),
                           "other.w": torch.full((2,), 3.0), "methodx": torch.ones(1)}, "epoch": 3,
            "callbacks": {"x": {"dirpath": "a", "best": torch.tensor(0.5)}}}
    torch.save(tree, ckpt)
    got = method_state(ckpt)
    assert list(got) == ["model.w", "weights"]
    assert torch.equal(got["model.w"], torch.ones(2)) and torch.equal(got["weights"], torch.zeros(1))
    assert RunDir.method_state(str(ckpt)).keys() == got.keys()
    # an object that is not a tensor, container or scalar is refused (weights-only load), not built
    tree["callbacks"]["x"] = Extra(Path("a"))
    torch.save(tree, ckpt)
    with pytest.raises(DataError, match=r"x\.ckpt wants to load tests\.engine\.test_rundir\.Extra"):
        method_state(ckpt)


def test_stage_states_and_load_method_state(tmp_path):
    run = RunDir(tmp_path)
    for m in ("a", "v"):
        stage = _method(Unimodal, modality=m)
        with torch.no_grad():
            for p in stage.parameters():
                p.fill_(1.0 if m == "a" else 2.0)
        run.stage(f"unimodal_{m}").checkpoints.mkdir(parents=True)
        torch.save({"state_dict": {f"method.{k}": v for k, v in stage.state_dict().items()}},
                   run.stage(f"unimodal_{m}").best_checkpoint)
    states = run.stage_states(["unimodal_v", "unimodal_a"])
    assert list(states) == ["unimodal_v", "unimodal_a"]
    assert all(torch.all(v == 2.0) for v in states["unimodal_v"].values())
    assert all(torch.all(v == 1.0) for v in states["unimodal_a"].values())
    target = _method(Unimodal, modality="a")
    RunDir.load_method_state(target, run.stage("unimodal_v").best_checkpoint)
    assert all(torch.all(p == 2.0) for p in target.parameters())


def test_checkpoint_to_load_prefers_the_named_then_best_then_last(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint_to_load() is None and run.checkpoint_to_load({"best_checkpoint": "epoch=3.ckpt"}) is None
    run.checkpoints.mkdir()
    run.last_checkpoint.write_bytes(b"")
    assert run.checkpoint_to_load() == tmp_path / "checkpoints" / "last.ckpt"
    run.best_checkpoint.write_bytes(b"")
    assert run.checkpoint_to_load({"best_checkpoint": "gone.ckpt"}) == tmp_path / "checkpoints" / "best.ckpt"
    (run.checkpoints / "epoch=3.ckpt").write_bytes(b"")
    assert run.checkpoint_to_load({"best_checkpoint": "epoch=3.ckpt"}) == tmp_path / "checkpoints" / "epoch=3.ckpt"
    assert run.checkpoint_to_load({"best_checkpoint": None}) == tmp_path / "checkpoints" / "best.ckpt"


# layout, stages


def test_file_names_of_a_run(tmp_path):
    run = RunDir(str(tmp_path))
    assert repr(RunDir("out/x")) == "RunDir('out/x')"
    assert run.path == tmp_path
    assert (run.config, run.inputs, run.metrics, run.predictions, run.checkpoints, run.stages, run.probes_plot) == (
        tmp_path / "config.yaml", tmp_path / "inputs.json", tmp_path / "metrics.json", tmp_path / "predictions.npz",
        tmp_path / "checkpoints", tmp_path / "stages", tmp_path / "probes.png")
    assert run.last_checkpoint == tmp_path / "checkpoints" / "last.ckpt"
    assert run.best_checkpoint == tmp_path / "checkpoints" / "best.ckpt"
    assert run.stage("unimodal_a").path == tmp_path / "stages" / "unimodal_a"
    assert (RunDir.LOGS, RunDir.STAGE_KEY) == ("logs", "stage.key")
    deep = RunDir(tmp_path / "x" / "y")
    assert deep.mkdir() is deep and deep.path.is_dir()
    assert deep.mkdir() is deep  # exists: no error


def test_stage_names_are_the_stages_with_a_best_checkpoint_sorted(tmp_path):
    run = RunDir(tmp_path)
    assert run.stage_names() == []
    for name, file in (("unimodal_v", "best.ckpt"), ("unimodal_a", "best.ckpt"), ("half", "last.ckpt")):
        run.stage(name).checkpoints.mkdir(parents=True)
        (run.stage(name).checkpoints / file).write_bytes(b"")
    assert run.stage_names() == ["unimodal_a", "unimodal_v"]


def test_stage_key_round_trip_and_finished(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_stage_key() is None and not run.is_finished()
    run.write_stage_key("abc123")
    assert (tmp_path / "stage.key").read_text() == "abc123"
    (tmp_path / "stage.key").write_text("  abc123\n")
    assert run.read_stage_key() == "abc123"
    run.write_metrics({})
    assert run.is_finished()


def test_link_to_a_cached_stage(tmp_path):
    cache = RunDir(tmp_path / "cache" / "k1").mkdir()
    other = RunDir(tmp_path / "cache" / "k2").mkdir()
    link = RunDir(tmp_path / "run" / "stages" / "unimodal_a")
    link.link_to(cache)
    assert link.path.is_symlink() and os.readlink(link.path) == os.path.join("..", "..", "cache", "k1")
    assert link.path.resolve() == cache.path.resolve()
    link.link_to(cache)  # already that stage: nothing to do
    second = RunDir(tmp_path / "run" / "stages" / "unimodal_x")  # its parent exists now
    second.link_to(other)
    assert os.readlink(second.path) == os.path.join("..", "..", "cache", "k2")
    with pytest.raises(DataError) as err:
        link.link_to(other)
    assert str(err.value) == f"{link.path} exists and is not the cached stage {other.path}"
    plain = RunDir(tmp_path / "run" / "stages" / "unimodal_v").mkdir()
    with pytest.raises(DataError):
        plain.link_to(cache)
    os.rmdir(cache.path)  # a dangling link is still "there"
    with pytest.raises(DataError):
        link.link_to(other)


# config, inputs, metrics


def test_config_round_trip_keeps_the_key_order_and_falls_back_to_metrics(tmp_path):
    run = RunDir(tmp_path)
    run.write_config({"method": {"name": "mcr"}, "data": {"n": 3}, "a": 1})
    assert list(yaml.safe_load(run.config.read_text())) == ["method", "data", "a"]
    assert run.read_config() == {"method": {"name": "mcr"}, "data": {"n": 3}, "a": 1}
    old = RunDir(tmp_path / "old").mkdir()
    old.write_metrics({"config": {"x": 1}, "path": Path("p")})
    assert old.read_config() == {"x": 1}
    bare = RunDir(tmp_path / "bare").mkdir()
    bare.write_metrics({"test": {}})
    assert bare.read_config() is None


def test_metrics_are_indented_json_with_str_for_the_rest(tmp_path):
    run = RunDir(tmp_path)
    run.write_metrics({"a": 1, "p": Path("x/y")})
    assert run.metrics.read_text() == '{\n  "a": 1,\n  "p": "x/y"\n}'
    assert run.read_metrics() == {"a": 1, "p": "x/y"}
    run.metrics.write_text("{oops")
    with pytest.raises(DataError) as err:
        run.read_metrics()
    assert str(err.value).startswith(f"{run.metrics} is not valid JSON (Expecting property name")


def test_inputs_round_trip_and_errors(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_inputs() is None
    run.write_inputs({"shapes": {"a": [5]}, "classes": 3})
    assert json.loads(run.inputs.read_text()) == {"shapes": {"a": [5]}, "classes": 3}
    assert run.read_inputs() == {"shapes": {"a": [5]}, "classes": 3}
    run.inputs.write_text("[1,")
    with pytest.raises(DataError) as err:
        run.read_inputs()
    assert str(err.value).startswith(f"{run.inputs} is not valid JSON (Expecting value")


def test_missing_unfinished_and_misnamed_runs_are_one_clear_error(tmp_path):
    missing = RunDir(tmp_path / "nope")
    with pytest.raises(DataError) as err:
        missing.read_metrics()
    assert str(err.value) == f"run directory {tmp_path / 'nope'} does not exist"
    with pytest.raises(DataError) as err:
        missing.read_config()
    assert str(err.value) == f"run directory {tmp_path / 'nope'} does not exist"
    unfinished = RunDir(tmp_path / "run").mkdir()
    unfinished.write_metrics({})
    with pytest.raises(DataError) as err:  # missing, though its parent is a run folder
        RunDir(unfinished.path / "nope").read_metrics()
    assert str(err.value) == f"run directory {unfinished.path / 'nope'} does not exist"
    unfinished.metrics.unlink()
    with pytest.raises(DataError) as err:
        unfinished.read_metrics()
    assert str(err.value) == f"{unfinished.path} has no metrics.json: not a finished `mmbalance train` run"
    stray = tmp_path / "stray.txt"
    stray.write_text("x")
    with pytest.raises(DataError) as err:
        RunDir(stray).check_is_run()
    assert str(err.value) == f"{stray} is a file, not a run folder (an `mmbalance train --out` folder)"
    unfinished.write_config({"a": 1})
    unfinished.checkpoints.mkdir()
    unfinished.best_checkpoint.write_bytes(b"")
    for inside in (unfinished.config, unfinished.best_checkpoint):
        with pytest.raises(DataError) as err:
            RunDir(inside).read_metrics()
        assert str(err.value) == f"{inside} is inside the run folder {unfinished.path}; pass the run folder: {unfinished.path}"


def test_enclosing_run_looks_up_four_levels_for_config_or_metrics(tmp_path):
    run = RunDir(tmp_path / "run").mkdir()
    run.write_metrics({})  # metrics.json alone marks a run
    deep = run.path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert RunDir(run.path / "x").enclosing_run() == run.path
    assert RunDir(deep / "f").enclosing_run() == run.path  # parents: c, b, a, run
    assert RunDir(deep / "d" / "f").enclosing_run() is None  # run is the fifth
    (run.path / "metrics.json").unlink()
    assert RunDir(run.path / "x").enclosing_run() is None
    (run.path / "config.yaml").mkdir()  # a folder named config.yaml is no config
    assert RunDir(run.path / "x").enclosing_run() is None
    assert RunDir(run.path / "config.yaml").enclosing_run() is None


# predictions


def test_predictions_round_trip_by_hand(tmp_path):
    method = _method()
    batches, xa, xv, labels = _loader()
    method.train()
    run = RunDir(tmp_path)
    assert run.write_predictions(method, batches) == tmp_path / "predictions.npz"
    assert method.training and sorted(p.name for p in tmp_path.iterdir()) == ["predictions.npz"]
    with torch.no_grad():
        method.eval()
        out = method({"a": xa, "v": xv})
    with np.load(run.predictions, allow_pickle=False) as f:
        assert sorted(f.files) == ["fused", "label", "modalities", "task", "unimodal"]
        assert f["modalities"].tolist() == ["a", "v"] and str(f["task"]) == "classification"
        assert f["unimodal"].shape == (2, 5, 3)
    preds = run.read_predictions()
    assert preds.task == "classification" and list(preds.unimodal) == ["a", "v"]
    assert np.array_equal(preds.label, labels.numpy())
    assert np.allclose(preds.fused, out.logits.numpy(), atol=1e-6)
    assert np.allclose(preds.unimodal["v"], out.unimodal_logits["v"].numpy(), atol=1e-6)


def test_predictions_of_a_method_without_unimodal_heads_and_without_a_model(tmp_path):
    class Plain(torch.nn.Module):  # no .model: classification; no unimodal logits
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(5, 2)

        def forward(self, inputs):
            from mmbalance.types import ModelOutput
            return ModelOutput(self.w(inputs["a"]), {}, {})

        def predict(self, out):
            return out.logits

    batches, xa, _, labels = _loader()
    run = RunDir(tmp_path)
    run.write_predictions(Plain(), [({"a": x["a"]}, y) for x, y in batches])
    with np.load(run.predictions) as f:
        assert f["unimodal"].shape == (0, 5, 2) and f["unimodal"].dtype == np.float32
        assert f["modalities"].shape == (0,) and f["modalities"].dtype.kind == "U"
        assert str(f["task"]) == "classification"
    assert run.read_predictions().unimodal == {}


def test_regression_predictions_and_bad_files(tmp_path):
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 4, hidden=6, layers=1)}, 1)
    batches, *_ = _loader()
    run = RunDir(tmp_path)
    run.write_predictions(Joint(model), [(x, y.float()) for x, y in batches])
    assert run.read_predictions().task == "regression"
    missing = RunDir(tmp_path / "none")
    with pytest.raises(DataError) as err:
        missing.read_predictions()
    assert str(err.value) == (f"{missing.predictions} does not exist (the run predates per-sample predictions, "
                              "or did not finish)")
    np.savez(run.predictions, label=np.zeros(2))
    with pytest.raises(DataError) as err:
        run.read_predictions()
    assert str(err.value).startswith(f"{run.predictions} is not a predictions file (KeyError: ")
    run.predictions.write_bytes(b"not a zip")
    with pytest.raises(DataError) as err:
        run.read_predictions()
    assert str(err.value).startswith(f"{run.predictions} is not a predictions file (")
