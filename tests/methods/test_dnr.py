"""DnR: the cluster purity against a brute-force count, the scaling and the seeded k-means, the
soft re-initialisation of every encoder of a three-modality model against the formula from
purities counted by hand, the schedule (nothing off it, nothing after ``reinit_num``), the
initial copy through a weights-only checkpoint and from unimodal stages, refusals, the search
space, the test-split guard with the diagnosis running, and ``mmbalance train`` on synthetic data (the
run's checkpoint holds the initial copy) and on a three-modality .npz (a resumed run ends alike)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import optuna
import pytest
import torch

from mmbalance.cli import main
from mmbalance.errors import ConfigError
from mmbalance.methods import get_method
from mmbalance.methods.dnr import DnR, cluster_purity, kmeans, minmax_scale, relearning_strength
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.training import build_data, build_method, build_model

from ..conftest import three_modality_npz, tiny_config, whole_and_resumed
from .test_test_split_guard import check_test_split_untouched, guards, run_module  # noqa: F401 (a fixture)

NAMES = ("a", "v", "t")
DIMS = (5, 3, 4)
C = 3


def _model(m=3, seed=0, num_classes=C):
    torch.manual_seed(seed)
    encoders = {n: MLPEncoder(d, 4, hidden=6, layers=1) for n, d in zip(NAMES[:m], DIMS[:m])}
    return MultimodalModel(encoders, num_classes, fusion="concat_linear")


def _hp(**kw):
    return DnR.Hyperparameters(**kw)


def _brute_purity(labels, clusters):
    hits = 0
    for k in set(clusters):
        members = [y for y, c in zip(labels, clusters) if c == k]
        hits += max(members.count(y) for y in set(members))
    return hits / len(labels)


def test_purity_is_the_brute_force_count():
    gen = torch.Generator().manual_seed(3)
    for n, k, c in [(1, 1, 1), (7, 3, 2), (50, 4, 6), (200, 9, 5)]:
        labels = torch.randint(c, (n,), generator=gen) * 3 + 2  # gaps in the label values (2, 5, 8, ...)
        clusters = torch.randint(k, (n,), generator=gen) * 7
        assert cluster_purity(labels, clusters) == pytest.approx(_brute_purity(labels.tolist(), clusters.tolist()))
    assert cluster_purity(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 1, 1, 1])) == pytest.approx(4 / 6)


def test_minmax_scale_maps_each_column_to_minus_one_one():
    x = torch.tensor([[0.0, 5.0, 2.0], [2.0, 5.0, -2.0], [1.0, 5.0, 0.0]])
    got = minmax_scale(x)
    want = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0], [0.0, -1.0, 0.0]])  # constant column: -1
    assert torch.allclose(got, want)


def _blobs(sizes, dim=4, spread=0.01, seed=0):
    """Tight blobs far apart: ``sizes[j]`` rows around centre j."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[: len(sizes)] * 10
    rows = [centres[j] + spread * torch.randn(s, dim, generator=gen) for j, s in enumerate(sizes)]
    return torch.cat(rows), torch.cat([torch.full((s,), j) for j, s in enumerate(sizes)])


def test_kmeans_finds_separated_blobs_deterministically_without_the_global_rng():
    x, blob = _blobs([20, 30, 25])
    rng = torch.get_rng_state()
    got = kmeans(x, 3, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert cluster_purity(blob, got) == 1.0 and len(set(got.tolist())) == 3
    assert torch.equal(got, kmeans(x, 3, seed=0))
    assert cluster_purity(blob, kmeans(x, 3, seed=5, n_init=4)) == 1.0


def test_kmeans_agrees_with_scikit_learn_on_separated_blobs():
    sk = pytest.importorskip("sklearn.cluster")
    x, _ = _blobs([15, 10, 12, 8], seed=2)
    ours = kmeans(minmax_scale(x), 4)
    theirs = torch.as_tensor(sk.KMeans(n_clusters=4, random_state=0, n_init=1).fit_predict(minmax_scale(x).numpy()))
    assert cluster_purity(theirs, ours) == 1.0 and cluster_purity(ours, theirs) == 1.0


#: split -> the label of each row; per modality, split -> the blob each row's feature sits in
LABELS = {"train": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], "val": [0, 0, 0, 1, 1, 1, 2, 2, 2]}
LAYOUT = {"a": {"train": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], "val": [0, 0, 1, 1, 1, 2, 2, 2, 0]},
          "v": {"train": [0, 0, 2, 2, 0, 0, 1, 1, 1, 1, 2, 2], "val": [0, 0, 0, 1, 1, 1, 2, 2, 2]},
          "t": {"train": [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0], "val": [0, 1, 2, 0, 1, 2, 0, 1, 2]}}


def _split(split):
    """Features (a tight blob per cluster, blobs far apart) and labels of one split."""
    feats = {}
    for j, m in enumerate(NAMES):
        blob = torch.tensor(LAYOUT[m][split])
        gen = torch.Generator().manual_seed(j)
        feats[m] = torch.eye(4)[blob] * 10 + 0.01 * torch.randn(len(blob), 4, generator=gen)
    return feats, torch.tensor(LABELS[split])


class FakePasses:
    """Hands the hook fixed features per split; records which splits were read."""

    def __init__(self):
        self.data = {s: _split(s) for s in ("train", "val")}
        self.asked = []

    def collect(self, split, fn, gather=True):
        self.asked.append(split)
        feats, labels = self.data[split]
        return fn(SimpleNamespace(features=feats), labels)


def _hand_purity(m, split):
    """Purity counted by hand from the layout: per blob, its most frequent label."""
    groups = {}
    for blob, y in zip(LAYOUT[m][split], LABELS[split]):
        groups.setdefault(blob, []).append(y)
    return sum(max(g.count(y) for y in g) for g in groups.values()) / len(LABELS[split])


def test_soft_reinit_of_every_encoder_matches_the_formula():
    model = _model()
    method = DnR(model, _hp(reinit_epoch=2, move_lambda=3.0))
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():  # stands for training: every parameter moved away from its start
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    passes = FakePasses()
    logs = method.on_epoch_pass(2, passes)
    assert sorted(set(passes.asked)) == ["train", "val"]
    for m in NAMES:
        p_train, p_val = _hand_purity(m, "train"), _hand_purity(m, "val")
        alpha = math.tanh(3.0 * abs(p_train - p_val))
        assert logs[f"purity_train/{m}"] == pytest.approx(p_train)
        assert logs[f"purity_val/{m}"] == pytest.approx(p_val)
        assert logs[f"relearn_alpha/{m}"] == pytest.approx(alpha)
        assert alpha == pytest.approx(relearning_strength(p_train, p_val, 3.0))
        for n, p in model.named_parameters():
            if n.startswith(f"encoders.{m}."):
                assert torch.allclose(p, alpha * init[n] + (1 - alpha) * before[n], atol=1e-6), n
    for n, p in model.named_parameters():  # heads and fusion are not re-initialised
        if not n.startswith("encoders."):
            assert torch.equal(p, before[n]), n
    assert logs["relearn_alpha/v"] > logs["relearn_alpha/a"] > 0
    assert int(method.reinits) == 1 and int(method.last_epoch) == 2


def test_nothing_happens_off_schedule_or_after_reinit_num():
    class Refuse:
        def collect(self, *args, **kwargs):
            raise AssertionError("read a split off the schedule")

    method = DnR(_model(m=2), _hp(reinit_epoch=3, reinit_num=2))
    state = {k: v.clone() for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}
    for epoch in (0, 1, 2, 4, 5, 7, 9, 12):  # 0 never; 3 and 6 are the two re-inits; 9 would be the third
        assert method.on_epoch_pass(epoch, Refuse()) == {}
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in state.items())
    assert [e for e in range(20) if method.scheduled(e)] == [3, 6]
    official = []  # ours.py:418-420 with its counter
    flag = 0
    for epoch in range(20):
        if epoch % 3 == 0 and epoch > 0:
            flag += 1
            if flag <= 2:
                official.append(epoch)
    assert official == [3, 6]
    method.on_epoch_pass(3, FakePasses())
    after = method.state_dict()
    method.on_epoch_pass(3, FakePasses())  # the same epoch again (a repeated hook)
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in after.items() if isinstance(v, torch.Tensor))


def test_the_initial_copy_survives_a_weights_only_checkpoint(tmp_path):
    method = DnR(_model(seed=0), _hp(reinit_epoch=1))
    init = {n: p.detach().clone() for n, p in method.model.encoders.named_parameters()}
    with torch.no_grad():
        for p in method.parameters():
            p.mul_(0.5).add_(1.0)
    torch.save(method.state_dict(), tmp_path / "s.pt")
    fresh = DnR(_model(seed=7), _hp(reinit_epoch=1))
    assert not torch.equal(fresh.initial, method.initial)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert torch.equal(fresh.initial, method.initial)
    for m in NAMES:  # alpha = 1 puts every encoder back to the copy taken at build time
        fresh.relearn({m: 1.0})
    for n, p in fresh.model.encoders.named_parameters():
        assert torch.equal(p, init[n]), n
    bad = DnR(_model(m=2), _hp())
    with pytest.raises(ConfigError, match="dnr"):
        bad.set_extra_state(method.initial)


def test_unimodal_stages_become_the_initial_weights():
    method = DnR(_model(m=2, seed=0), _hp(init="unimodal"))
    trained = DnR(_model(m=2, seed=4), _hp())
    states = {s.name: trained.state_dict() for s in DnR.stages(list(NAMES[:2]), method.hparams)}
    method.load_stages(states)
    want = torch.cat([p.detach().reshape(-1) for p in trained.model.encoders.parameters()])
    assert torch.equal(method.initial, want)


def test_refusals_name_the_method():
    with pytest.raises(ConfigError, match="'dnr'.*classification"):
        DnR(_model(num_classes=1), _hp())
    for bad in ({"reinit_epoch": 0}, {"reinit_num": -1}, {"move_lambda": -1.0}, {"kmeans_n_init": 0}):
        with pytest.raises(ConfigError, match="dnr"):
            DnR(_model(), _hp(**bad))


def test_search_space_and_defaults():
    assert get_method("dnr") is DnR
    defaults = DnR.hyperparameter_defaults()
    assert (defaults["move_lambda"], defaults["reinit_epoch"], defaults["reinit_num"]) == (3.0, 20, 3)
    trial = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.move_lambda": 2.0, "method.reinit_epoch": 5,
                                     "method.reinit_num": 2})
    assert DnR.search_space(trial) == {"optim.lr": 1e-3, "method.move_lambda": 2.0, "method.reinit_epoch": 5,
                                       "method.reinit_num": 2}


def test_train_on_synthetic_relearns_and_checkpoints_the_initial_copy(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    code = main(["train", "--data", "synthetic", "--method", "dnr", "--set", "data.n=300", "data.dim=16",
                 "data.batch_size=16", "model.feature_dim=8", "model.hidden=16", "trainer.max_epochs=3",
                 "trainer.progress=false", "trainer.patience=0", "method.reinit_epoch=1", "method.reinit_num=1",
                 "--out", str(out)])
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(Path(out, "logs/version_0/metrics.csv").read_text())))
    epochs = sorted({r["epoch"] for r in rows if r.get("balance/relearn_alpha/x1")})
    assert epochs == ["1"]  # epoch 1 only: not 0, and reinit_num=1 stops it before epoch 2
    ckpt = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    cfg = tiny_config("dnr", data__n=300, trainer__max_epochs=3)
    L.seed_everything(cfg.seed, verbose=False)
    fresh = build_method(cfg, build_model(build_data(cfg), cfg))
    assert torch.equal(ckpt["state_dict"]["method._extra_state"], fresh.initial)
    assert int(ckpt["state_dict"]["method.reinits"]) == 1


def test_the_diagnosis_reads_train_and_val_but_never_test(guards, tmp_path):
    """With ``reinit_epoch=1`` the pass runs after epoch 1 of 2, through the guarded test split."""
    torch.set_num_threads(1)
    metrics = run_module.train(tiny_config("dnr", method__reinit_epoch=1), tmp_path / "dnr")
    assert len(guards) == 1
    check_test_split_untouched(guards[0])
    assert metrics["epochs_run"] == 2
    rows = list(csv.DictReader(io.StringIO(Path(tmp_path, "dnr/logs/version_0/metrics.csv").read_text())))
    assert any(r.get("balance/purity_val/x2") for r in rows)


def test_trains_on_a_three_modality_npz_and_a_resumed_run_ends_alike(tmp_path):
    """3 epochs whole, or 2 then ``--resume`` to 3: re-initialised after epochs 1 and 2 either way,
    the same weights and initial copy at the end."""
    torch.set_num_threads(1)
    args = ["train", "--data", str(three_modality_npz(tmp_path / "three.npz")), "--method", "dnr",
            "--set", "trainer.progress=false", "model.hidden=8", "model.feature_dim=4", "method.reinit_epoch=1"]
    whole, _, resumed = whole_and_resumed(args, tmp_path, epochs=3, stop=2)
    assert int(whole["method.reinits"]) == 2 and whole["method._extra_state"].numel() > 0
    assert whole.keys() == resumed.keys()
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
