"""OGM's TPAMI 2024 options (Wei et al., GeWu-Lab/BML_TPAMI2024): OGM_plus (``method.plus``)
and the warm-up (epochs 0-5 unmodulated, ``method.start_epoch=6``), each checked on one step
of a tiny model against an independent computation: the scores by brute-force loops, the
coefficients by the official two-branch rule, every parameter's gradient by autograd on
the plain fused cross-entropy, scaled by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mmbalance.methods.ogm import OGM, OGMGE, ogm_plus_coefficients
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch


def _model(dims=(5, 3), seed=0):
    torch.manual_seed(seed)
    names = ("a", "v", "t")[:len(dims)]
    encoders = {m: MLPEncoder(d, 4, hidden=6, layers=1) for m, d in zip(names, dims)}
    return MultimodalModel(encoders, 3, fusion="concat_linear")


def _data(n=6, dims=(5, 3), seed=1):
    gen = torch.Generator().manual_seed(seed)
    names = ("a", "v", "t")[:len(dims)]
    return {m: torch.randn(n, d, generator=gen) for m, d in zip(names, dims)}, torch.tensor([0, 1, 2, 0, 1, 2][:n])


def _brute_scores(model, x, y):
    """``s_m = sum_i softmax(z_m W_m^T + b/M)[i, y_i]`` by loops over samples and classes."""
    feats = {m: model.encoders[m](x[m]).tolist() for m in x}
    b, M = model.fusion.bias.tolist(), len(x)
    scores = {}
    for m in x:
        W = model.fusion.weights[m].weight.tolist()
        total = 0.0
        for i in range(len(y)):
            logits = [sum(feats[m][i][d] * W[c][d] for d in range(4)) + b[c] / M for c in range(3)]
            exps = [math.exp(v) for v in logits]
            total += exps[int(y[i])] / sum(exps)
        scores[m] = total
    return scores


def _reference_grads(model, x, y):
    """Gradients of the plain fused cross-entropy on an independent copy of the model."""
    twin = copy.deepcopy(model)
    loss = F.cross_entropy(twin(x).logits, y)
    loss.backward()
    return float(loss.detach()), {n: None if p.grad is None else p.grad.clone() for n, p in twin.named_parameters()}


def _step(method, x, y, epoch):
    method.on_epoch_start(epoch)
    method.zero_grad()
    out = method(x)
    terms = method.training_loss(Batch(x, y), out)
    terms.total.backward()
    logs = method.after_backward()
    return float(terms.total.detach()), logs


def _expected(method, grads, coeffs, modulated):
    """Each parameter's gradient: the encoder weight tensors (ndim >= 2) of modality m times
    ``coeffs[m]`` when modulated; everything else (biases, fusion, heads) as is."""
    want = {}
    for name, g in grads.items():
        if g is None:  # the unimodal heads: outside the fused loss
            want[name] = None
            continue
        parts = name.split(".")
        k = coeffs[parts[1]] if modulated and parts[0] == "encoders" and g.dim() >= 2 else 1.0
        want[name] = g * k
    return want


def _check_grads(method, want):
    got = {n[len("model."):]: p.grad for n, p in method.named_parameters()}
    assert got.keys() == want.keys()
    assert any(g is not None for g in want.values())
    for name in want:
        if want[name] is None:
            assert got[name] is None or not got[name].any(), name
            continue
        assert torch.allclose(got[name], want[name], atol=1e-6, rtol=1e-5), name


def test_plus_defaults_keep_the_cvpr_rule():
    hp = OGM.Hyperparameters()
    assert (hp.plus, hp.plus_factor, hp.start_epoch, hp.end_epoch) == (False, 4.0, 0, 50)
    assert "method.plus" not in OGM.search_space(__import__("optuna").trial.FixedTrial({"optim.lr": 1e-3,
                                                                                      "method.alpha": 0.5}))


def test_plus_coefficients_two_and_three_modalities_and_tie():
    # official: s_1/s_2 > 1 -> k_2 = 4, k_1 = 1; else k_1 = 4, k_2 = 1
    assert ogm_plus_coefficients(torch.tensor([6.0, 3.0])).tolist() == [1.0, 4.0]
    assert ogm_plus_coefficients(torch.tensor([2.0, 3.0])).tolist() == [4.0, 1.0]
    assert ogm_plus_coefficients(torch.tensor([2.0, 1.0, 4.0]), 2.5).tolist() == [1.0, 2.5, 1.0]
    assert ogm_plus_coefficients(torch.tensor([2.0, 2.0])).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("dims", [(5, 3), (5, 3, 2)])
def test_plus_one_step_against_an_independent_computation(dims):
    model = _model(dims)
    x, y = _data(dims=dims)
    method = OGM(model, OGM.Hyperparameters(plus=True, alpha=0.7))
    scores = _brute_scores(model, x, y)
    loss_ref, grads = _reference_grads(model, x, y)
    weakest = min(scores, key=scores.get)
    assert sorted(scores.values())[0] < sorted(scores.values())[1]  # no tie in this draw
    coeffs = {m: (4.0 if m == weakest else 1.0) for m in scores}
    loss, logs = _step(method, x, y, epoch=0)
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    assert logs == {f"coeff/{m}": coeffs[m] for m in scores}
    _check_grads(method, _expected(method, grads, coeffs, modulated=True))


def test_plus_two_modalities_follows_the_official_branches():
    model = _model()
    x, y = _data()
    s = _brute_scores(model, x, y)
    method = OGM(model, OGM.Hyperparameters(plus=True))
    _step(method, x, y, epoch=0)
    radio_1 = s["a"] / s["v"]  # code/main.py:119, 128-136
    official = (1.0, 4.0) if radio_1 > 1 else (4.0, 1.0)
    assert tuple(method.coefficients.tolist()) == official


def test_plus_with_ge_adds_the_same_noise_as_without():
    """OGM-GE's noise std is the unscaled gradient's (main.py:159-160), with or without plus:
    the same seed and step draw the same noise, so ``grad - k g`` agrees."""
    torch.manual_seed(0)
    encoders = {"a": MLPEncoder(32, 32, hidden=32, layers=1), "v": MLPEncoder(32, 32, hidden=32, layers=1)}
    plain = OGMGE(MultimodalModel(encoders, 3))
    boosted = copy.deepcopy(plain)
    boosted.hparams = OGMGE.Hyperparameters(plus=True)
    gen = torch.Generator().manual_seed(3)
    grads = {n: torch.randn(p.shape, generator=gen) for n, p in plain.named_parameters()}
    residuals = []
    for method, k in ((plain, {"a": 1.0, "v": 1.0}), (boosted, {"a": 4.0, "v": 1.0})):
        method.coefficients.copy_(torch.tensor([k["a"], k["v"]]))
        for n, p in method.named_parameters():
            p.grad = grads[n].clone()
        method.after_backward()
        residuals.append({n: p.grad - k[n.split(".")[2]] * grads[n] for n, p in method.named_parameters()
                          if n.startswith("model.encoders.") and p.dim() >= 2})
    for n in residuals[0]:
        assert torch.allclose(residuals[0][n], residuals[1][n], atol=1e-5), n
        assert float(residuals[0][n].std()) == pytest.approx(float(grads[n].std()), rel=0.15)


@pytest.mark.parametrize("plus", [False, True])
def test_tpami_warm_up_and_window(plus):
    """BML_TPAMI2024: no modulation while epoch <= 5 (main.py:91), then 0 <= epoch <= 60
    (scripts/train_ogm.sh): here ``start_epoch=6, end_epoch=60``."""
    model = _model()
    x, y = _data()
    method = OGM(model, OGM.Hyperparameters(alpha=0.8, start_epoch=6, end_epoch=60, plus=plus))
    for epoch, modulated in ((0, False), (5, False), (6, True), (60, True), (61, False)):
        loss_ref, grads = _reference_grads(model, x, y)
        s = _brute_scores(model, x, y)
        if plus:
            coeffs = {"a": 4.0, "v": 1.0} if s["a"] < s["v"] else {"a": 1.0, "v": 4.0}
        else:
            low = min(s.values())
            coeffs = {m: (1 - math.tanh(0.8 * v / low) if v / low > 1 else 1.0) for m, v in s.items()}
        loss, _ = _step(method, x, y, epoch)
        assert loss == pytest.approx(loss_ref, rel=1e-6)
        assert method.coefficients.tolist() == pytest.approx([coeffs["a"], coeffs["v"]], rel=1e-5)
        _check_grads(method, _expected(method, grads, coeffs, modulated))
