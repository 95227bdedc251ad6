"""MBSD: the per-sample weights and terms against brute-force loops in plain Python, one step's
loss and every parameter's gradient against an independent per-sample autograd computation
(2 and 3 modalities, each option), the epoch window, refusals, the search space, and
``mmbalance train`` on synthetic data and on a three-modality .npz."""

from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F

from mmbalance.cli import main
from mmbalance.errors import ConfigError
from mmbalance.methods import get_method
from mmbalance.methods.mbsd import MBSD, mbsd_pair_terms
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch

NAMES = ("a", "v", "t")
DIMS = (5, 3, 4)
C = 3


def _model(m=2, seed=0, num_classes=C):
    torch.manual_seed(seed)
    encoders = {n: MLPEncoder(d, 4, hidden=6, layers=1) for n, d in zip(NAMES[:m], DIMS[:m])}
    return MultimodalModel(encoders, num_classes, fusion="concat_linear")


def _data(m=2, n=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = {k: 2.0 * torch.randn(n, d, generator=gen) for k, d in zip(NAMES[:m], DIMS[:m])}
    return x, torch.randint(0, C, (n,), generator=gen)


def _softmax(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _brute_pair(za, zb, y, kl, rs_on):
    """Per-sample (w, RS, KL) by loops over samples and classes, in Python floats."""
    out = []
    for i in range(len(y)):
        pa, pb, yi = _softmax(za[i]), _softmax(zb[i]), int(y[i])
        right = max(range(C), key=lambda c: za[i][c]) == yi or max(range(C), key=lambda c: zb[i][c]) == yi
        w = abs(pa[yi] - pb[yi]) if right else 0.0
        a_teaches = pa[yi] >= pb[yi]
        ut, us = ((za[i], zb[i]) if a_teaches else (zb[i], za[i])) if rs_on == "logits" else \
            ((pa, pb) if a_teaches else (pb, pa))
        pt, ps = (pa, pb) if a_teaches else (pb, pa)
        rs = sum((us[c] - ut[c]) ** 2 for c in range(C)) / C
        if kl == "distribution":
            d = sum(pt[c] * math.log(pt[c] / ps[c]) for c in range(C))
        elif kl == "bernoulli":
            t, s = pt[yi], ps[yi]
            d = t * math.log(t / s) + (1 - t) * math.log((1 - t) / (1 - s))
        else:  # BalanceBenchmark: kl_div(input=p_max, target=p_min)
            d = ps[yi] * (math.log(ps[yi]) - pt[yi])
        out.append((w, rs, d))
    return out


@pytest.mark.parametrize("kl,rs_on", itertools.product(("distribution", "bernoulli", "bb"), ("logits", "probs")))
def test_pair_terms_by_brute_force(kl, rs_on):
    gen = torch.Generator().manual_seed(2)
    za, zb = 2 * torch.randn(12, C, generator=gen), 2 * torch.randn(12, C, generator=gen)
    y = torch.randint(0, C, (12,), generator=gen)
    got = mbsd_pair_terms(za, zb, y, kl=kl, rs_on=rs_on)
    want = _brute_pair(za.tolist(), zb.tolist(), y.tolist(), kl, rs_on)
    assert 0 < sum(w == 0 for w, _, _ in want) < 12  # both kinds of sample occur
    for name, column in zip(("weight", "rs", "kl"), zip(*want)):
        assert getattr(got, name).tolist() == pytest.approx(list(column), rel=1e-5, abs=1e-6), name


def _reference_loss(model, x, y, kl="distribution", rs_on="logits", detach_teacher=True, weight_grad=False,
                    distill_weight=1.0, unimodal_weight=1.0):
    """The loss built sample by sample from scalar tensor ops, teacher and weight chosen by
    Python branches: an independent route to the same value and gradients."""
    out = model(x)
    loss = F.cross_entropy(out.logits, y)
    loss = loss + unimodal_weight * sum(F.cross_entropy(z, y) for z in out.unimodal_logits.values())
    pairs = list(itertools.combinations(out.unimodal_logits, 2))
    distill = 0.0
    for m, n in pairs:
        acc = 0.0
        for i in range(len(y)):
            za, zb, yi = out.unimodal_logits[m][i], out.unimodal_logits[n][i], int(y[i])
            pa, pb = za.exp() / za.exp().sum(), zb.exp() / zb.exp().sum()
            right = int(za.argmax()) == yi or int(zb.argmax()) == yi
            w = (pa[yi] - pb[yi]).abs() if right else torch.zeros(())
            w = w if weight_grad else w.detach()
            (zt, pt), (zs, ps) = ((za, pa), (zb, pb)) if float(pa[yi].detach()) >= float(pb[yi].detach()) else ((zb, pb), (za, pa))
            if detach_teacher:
                zt, pt = zt.detach(), pt.detach()
            ut, us = (zt, zs) if rs_on == "logits" else (pt, ps)
            rs = ((us - ut) ** 2).sum() / C
            if kl == "distribution":
                d = (pt * (pt.log() - ps.log())).sum()
            elif kl == "bernoulli":
                d = pt[yi] * (pt[yi] / ps[yi]).log() + (1 - pt[yi]) * ((1 - pt[yi]) / (1 - ps[yi])).log()
            else:
                d = ps[yi] * (ps[yi].log() - pt[yi])
            acc = acc + w * (rs + d)
        distill = distill + acc / len(y)
    return loss + distill_weight * distill / len(pairs)


CASES = [  # (modalities, options)
    (2, {}),
    (2, {"kl": "bernoulli", "distill_weight": 2.5, "unimodal_weight": 0.5}),
    (2, {"kl": "bb", "detach_teacher": False, "weight_grad": True}),  # BalanceBenchmark's behaviour
    (2, {"rs_on": "probs", "detach_teacher": False}),
    (3, {}),
    (3, {"kl": "bb", "rs_on": "probs", "detach_teacher": False, "weight_grad": True}),
]


@pytest.mark.parametrize("m,options", CASES)
def test_one_step_loss_and_every_gradient(m, options):
    model = _model(m)
    x, y = _data(m)
    reference = copy.deepcopy(model)
    method = MBSD(model, MBSD.Hyperparameters(**options))
    out = method(x)
    for k, n in itertools.combinations(out.unimodal_logits, 2):  # both kinds of sample in every pair
        w = [r[0] for r in _brute_pair(out.unimodal_logits[k].tolist(), out.unimodal_logits[n].tolist(),
                                       y.tolist(), "bb", "logits")]
        assert 0 < sum(v == 0 for v in w) < len(w), (k, n)
    terms = method.training_loss(Batch(x, y), out)
    assert float(terms.terms["distill/rs"].detach()) > 1e-5 and float(terms.terms["distill/kl"].detach()) != 0
    terms.total.backward()
    want = _reference_loss(reference, x, y, **options)
    want.backward()
    assert float(terms.total.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert set(terms.terms) == {"task", *(f"unimodal/{k}" for k in NAMES[:m]), "distill/rs", "distill/kl"}
    got = dict(method.model.named_parameters())
    for name, p in reference.named_parameters():
        assert got[name].grad is not None and p.grad is not None, name
        assert torch.allclose(got[name].grad, p.grad, rtol=1e-4, atol=1e-6), name


def test_detach_and_weight_grad_options_change_the_gradient():
    x, y = _data()
    grads = []
    for options in ({}, {"detach_teacher": False}, {"weight_grad": True}):
        model = _model()
        method = MBSD(model, MBSD.Hyperparameters(**options))
        method.training_loss(Batch(x, y), method(x)).total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.heads.parameters()]))
    assert not torch.allclose(grads[0], grads[1]) and not torch.allclose(grads[0], grads[2])


def test_outside_the_window_only_the_fused_loss():
    model = _model()
    x, y = _data()
    method = MBSD(model, MBSD.Hyperparameters(start_epoch=2, end_epoch=3))
    for epoch, active in ((1, False), (2, True), (3, True), (4, False)):
        method.on_epoch_start(epoch)
        out = method(x)
        terms = method.training_loss(Batch(x, y), out)
        assert ("distill/kl" in terms.terms) == active, epoch
        if not active:
            assert set(terms.terms) == {"task"}
            assert torch.allclose(terms.total, F.cross_entropy(out.logits, y))
    assert method.get_extra_state() == {"epoch": 4}


def test_refusals():
    with pytest.raises(ConfigError, match=r"method\.kl 'js' is not one of distribution, bernoulli, bb"):
        MBSD(_model(), MBSD.Hyperparameters(kl="js"))
    with pytest.raises(ConfigError, match="rs_on"):
        MBSD(_model(), MBSD.Hyperparameters(rs_on="features"))
    with pytest.raises(ConfigError, match="classification"):
        MBSD(_model(num_classes=1))


def test_search_space_and_defaults():
    hp = MBSD.Hyperparameters()
    assert (hp.distill_weight, hp.unimodal_weight, hp.kl, hp.rs_on, hp.detach_teacher, hp.weight_grad,
            hp.start_epoch, hp.end_epoch) == (1.0, 1.0, "distribution", "logits", True, False, 0, None)
    fixed = optuna.trial.FixedTrial({"optim.lr": 1e-3, "method.distill_weight": 2.0, "method.unimodal_weight": 0.5})
    assert get_method("mbsd").search_space(fixed) == {"optim.lr": 1e-3, "method.distill_weight": 2.0,
                                                      "method.unimodal_weight": 0.5}


TINY = ["data.batch_size=16", "model.feature_dim=8", "model.hidden=16", "trainer.max_epochs=2",
        "trainer.progress=false"]


def test_trains_on_synthetic(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    code = main(["train", "--data", "synthetic", "--method", "mbsd", "--out", str(out), "--set", "data.n=300",
                 "data.dim=16", "data.latent_dim=4", *TINY])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "mbsd" and 0 <= metrics["test"]["accuracy"] <= 1


def test_trains_on_a_three_modality_npz(tmp_path, capsys):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = 240
    label = rng.integers(0, 3, n)
    arrays = {name: (rng.normal(size=(n, d)) + label[:, None] * 0.5).astype(np.float32)
              for name, d in (("audio", 6), ("video", 5), ("text", 4))}
    np.savez(tmp_path / "three.npz", label=label, **arrays)
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "three.npz"), "--method", "mbsd", "--out", str(out),
                 "--set", *TINY])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "mbsd" and {"accuracy/audio", "accuracy/video", "accuracy/text"} <= set(metrics["test"])
