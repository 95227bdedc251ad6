"""A trained model a person can use: ``mb.load_run`` and ``mmbalance predict``.

A tiny run is trained here on a user's ``.npz``; the model that trained it is kept (a
callback holds the method after the test pass, with the best weights). The run folder is
then moved, its training data taken away, and it is loaded from another working directory:
its predictions on new rows equal the kept model's on the same rows, standardized by hand
with the train split's mean and standard deviation."""

from __future__ import annotations

import shutil

import lightning as L
import numpy as np
import pytest
import torch

import mmbalance as mb
from mmbalance.analysis.predict import predict_arrays
from mmbalance.cli import main
from mmbalance.config import build_config
from mmbalance.data import InputSpec
from mmbalance.methods import get_method
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.training import train

from ..conftest import TINY

SPLIT = np.array(["train"] * 90 + ["val"] * 30 + ["test"] * 30)
CLASSES = 3


def _rows(rng, n):
    label = rng.integers(0, CLASSES, n)
    a = (np.eye(CLASSES)[label] * 2 + rng.normal(size=(n, CLASSES))) @ rng.normal(size=(CLASSES, 6)) + 5.0
    b = rng.normal(size=(n, 4)) * 3.0 - 1.0 + label[:, None] * 0.5
    return {"a": a.astype(np.float32), "b": b.astype(np.float32)}, label


class _Keep(L.Callback):
    """Keeps the trained method as it is after the test pass (best weights loaded)."""

    def on_test_end(self, trainer, pl_module):
        self.method = pl_module.method


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    arrays, label = _rows(np.random.default_rng(0), len(SPLIT))
    np.savez(root / "train.npz", label=label, split=SPLIT, **arrays)
    overrides = {**TINY, "trainer.max_epochs": 2}
    cfg = build_config("joint", str(root / "train.npz"), overrides, get_method("joint").Hyperparameters)
    keep = _Keep()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, root / "run", callbacks=[keep])
    finally:
        torch.set_num_threads(before)
    train_rows = {m: x[SPLIT == "train"].astype(np.float64) for m, x in arrays.items()}
    stats = {m: (x.mean(0).astype(np.float32), x.std(0).astype(np.float32)) for m, x in train_rows.items()}
    return root, keep.method.eval(), stats


def _expected(method, stats, arrays):
    """The kept model on hand-standardized rows, one batch: fused, heads, fusion parts."""
    x = {m: torch.from_numpy((a - stats[m][0]) / stats[m][1]) for m, a in arrays.items()}
    with torch.no_grad():
        out = method(x)
        fusion = method.model.fusion
        parts = {m: x_m @ fusion.weights[m].weight.T + fusion.bias / 2
                 for m, x_m in {m: method.model.encoders[m](x[m]) for m in x}.items()}
    return (method.predict(out).numpy(), {m: z.numpy() for m, z in out.unimodal_logits.items()},
            {m: z.numpy() for m, z in parts.items()})


def _moved(trained, tmp_path):
    """A copy of the run in a new place, the training data gone, cwd elsewhere."""
    root, _, _ = trained
    moved = tmp_path / "far" / "away" / "run"
    shutil.copytree(root / "run", moved, symlinks=True)
    (tmp_path / "cwd").mkdir()
    return moved


def test_moved_run_predicts_what_the_trained_model_did(trained, tmp_path, monkeypatch):
    root, method, stats = trained
    moved = _moved(trained, tmp_path)
    monkeypatch.chdir(tmp_path / "cwd")
    new, label = _rows(np.random.default_rng(1), 37)  # new rows, not a multiple of the batch size
    fused, heads, parts = _expected(method, stats, new)
    shutil.move(root / "train.npz", tmp_path / "hidden.npz")  # the model needs no training data,
    shutil.move(root / "run", tmp_path / "original")            # nor anything at the run's first place
    try:
        run = mb.load_run("../far/away/run")
    finally:
        shutil.move(tmp_path / "hidden.npz", root / "train.npz")
        shutil.move(tmp_path / "original", root / "run")
    assert run.checkpoint == moved / "checkpoints" / "best.ckpt" and run.metrics["method"] == "joint"
    assert run.cfg.method == "joint" and run.model.modalities == ["a", "b"]
    pred = run.predict(new)
    # the expected values come from one batch of 37 rows, run.predict from batches of 16:
    # other batch positions and kernels may round differently, so a tolerance (these
    # logits are about 0.3 in size: 1e-6 is some 30 float32 steps; a wrong standardization or
    # weight is far more)
    np.testing.assert_allclose(pred.logits, fused, rtol=0, atol=1e-6)
    for m in ("a", "b"):
        np.testing.assert_allclose(pred.unimodal[m], heads[m], rtol=0, atol=1e-6)
        np.testing.assert_allclose(pred.fusion[m], parts[m], rtol=0, atol=1e-6)
    with torch.no_grad():  # prepare() gives what run.model takes
        np.testing.assert_allclose(run.model(run.prepare(new)).logits.numpy(), fused, rtol=0, atol=1e-6)

    np.savez(tmp_path / "cwd" / "new.npz", label=label, **new)
    assert main(["predict", "../far/away/run", "--data", "new.npz", "--out", "out/pred.npz"]) == 0
    with np.load(tmp_path / "cwd" / "out" / "pred.npz") as f:
        np.testing.assert_allclose(f["logits"], fused, rtol=0, atol=1e-6)
        e = np.exp(fused - fused.max(1, keepdims=True))
        np.testing.assert_allclose(f["probabilities"], e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
        # the 1e-6 above cannot move an argmax: these rows' top two logits are far apart
        top2 = np.sort(fused, 1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0]).min() > 1e-4, "a near-tie: pick other rows"
        assert (f["prediction"] == fused.argmax(1)).all() and (f["label"] == label).all()
        assert float(f["accuracy"]) == pytest.approx((fused.argmax(1) == label).mean())
        assert list(f["modalities"]) == ["a", "b"] and list(f["fusion_modalities"]) == ["a", "b"]
        for m in ("a", "b"):
            np.testing.assert_allclose(f[f"unimodal_logits/{m}"], heads[m], rtol=0, atol=1e-6)
            np.testing.assert_allclose(f[f"fusion_logits/{m}"], parts[m], rtol=0, atol=1e-6)
        # the CLI and the API are one path: predict_arrays on the same rows, in batches of
        # the run's data.batch_size, in this process, so the same kernels: equal bit for bit
        np.testing.assert_array_equal(f["logits"], pred.logits)


def test_last_checkpoint_and_runs_without_inputs_json(trained, tmp_path, monkeypatch):
    root, method, stats = trained
    moved = _moved(trained, tmp_path)
    monkeypatch.chdir(tmp_path / "cwd")
    last = mb.load_run(moved, checkpoint="last")
    saved = torch.load(moved / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert last.checkpoint.name == "last.ckpt"
    for key, value in last.method.state_dict().items():
        assert torch.equal(value, saved["method." + key]), key
    new, _ = _rows(np.random.default_rng(2), 9)
    (moved / "inputs.json").unlink()  # a run from before inputs.json: rebuilt from its data
    np.testing.assert_allclose(mb.load_run(moved).predict(new).logits, _expected(method, stats, new)[0],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("case,culprit", [
    ("missing", "does not exist"),
    ("inside", "pass the run folder"),
    ("no_config", "has no config.yaml: not an `mmbalance train` run folder"),
    ("no_checkpoint", "has no best checkpoint"),
    ("wrong_name", "has no array 'b'; did you mean bb? the run was trained on modalities a, b"),
    ("wrong_dim", "modality 'a' has samples of shape (7,), the run was trained on (6,)"),
    ("bad_label", "'label'[0] = 3 is not a class of the run (0 to 2)"),
    ("not_a_file", "give a .npz or .h5 file"),
    ("out_not_npz", "the output is a .npz file"),
])
def test_bad_run_or_data_is_one_error_line(trained, tmp_path, case, culprit, capsys):
    moved = _moved(trained, tmp_path)
    new, label = _rows(np.random.default_rng(3), 5)
    run, data, out = moved, tmp_path / "new.npz", tmp_path / "pred.npz"
    if case == "missing":
        run = tmp_path / "nowhere"
    elif case == "inside":
        run = moved / "metrics.json"
    elif case == "no_config":
        (moved / "config.yaml").unlink()
        (moved / "metrics.json").unlink()
    elif case == "no_checkpoint":
        shutil.rmtree(moved / "checkpoints")
    elif case == "wrong_name":
        new["bb"] = new.pop("b")
    elif case == "wrong_dim":
        new["a"] = np.zeros((5, 7), np.float32)
    elif case == "bad_label":
        label[0] = 3
    elif case == "not_a_file":
        data = "synthetic"
    elif case == "out_not_npz":
        out = tmp_path / "pred.csv"
    np.savez(tmp_path / "new.npz", label=label, **new)
    assert main(["predict", str(run), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and culprit in err, err
    assert not (tmp_path / "pred.npz").exists()


def test_unimodal_and_cosine_methods_report_what_they_have():
    """A unimodal method needs only its modality and has one head; MMCosine's prediction is
    the sum of its cosine branches, not of the fusion's parts, so no fusion split is given."""
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(6, 4), "b": MLPEncoder(4, 4)}, CLASSES)
    spec = InputSpec({"a": (6,), "b": (4,)}, CLASSES, "classification")
    rows, _ = _rows(np.random.default_rng(4), 11)
    uni = get_method("unimodal")(model, get_method("unimodal").Hyperparameters(modality="b")).eval()
    pred = predict_arrays(uni, spec, {"b": rows["b"]}, batch_size=4)
    with torch.no_grad():
        head = model.heads["b"](model.encoders["b"](torch.from_numpy(rows["b"]))).numpy()
    np.testing.assert_allclose(pred.logits, head, rtol=0, atol=1e-6)
    assert list(pred.unimodal) == ["b"] and pred.fusion == {}
    cos = get_method("mmcosine")(model).eval()
    pred = predict_arrays(cos, spec, rows, batch_size=4)
    assert pred.fusion == {} and set(pred.unimodal) == {"a", "b"}
    np.testing.assert_allclose(pred.unimodal["a"] + pred.unimodal["b"], pred.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ensemble", "npz3"])
def test_loaded_runs_repeat_their_own_test_predictions(runs, name):
    """``predictions.npz``, written by ``train`` from the model in memory, equals what the
    loaded run predicts on the raw test rows: for the ensemble (no checkpoint of its own,
    weights from its stages, a batch-dependent standardized sum) and a 3-modality .npz run."""
    from mmbalance.data import make_synthetic
    run = mb.load_run(runs[name])
    if run.cfg.data_spec == "synthetic":
        raw = make_synthetic(run.cfg.data)
        split = raw["split"]
    else:
        with np.load(run.cfg.data_spec) as f:
            raw = {k: f[k] for k in f.files}
        split = np.full(len(raw["label"]), "", dtype=object)
        for s, rows in run.data.test.data.splits.items():  # the run's seeded split, as trained
            split[rows] = s
    rows = {m: raw[m][split == "test"] for m in run.model.modalities}
    saved = np.load(runs[name] / "predictions.npz")
    pred = run.predict(rows)
    np.testing.assert_allclose(pred.logits, saved["fused"], rtol=0, atol=1e-5)
    for i, m in enumerate(saved["modalities"]):
        np.testing.assert_allclose(pred.unimodal[str(m)], saved["unimodal"][i], rtol=0, atol=1e-5)
    assert (run.checkpoint is None) == (name == "ensemble")
