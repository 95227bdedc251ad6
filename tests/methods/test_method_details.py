"""Details of OGM/OGM-GE, AGM, MSLR, MLB and PMR that the other method tests left open, each
against a value written out by hand: OGM-GE's exact noise draw (seed, step, std + 1e-8,
dtype), OGM's run seed and frozen layers, AGM's scores and clipping bounds, MSLR's zero
mean and accumulation, MLB's unimodal weight, PMR's last epoch, first-tenth batches, seed and lazy sizing,
MMCosine's weight check and features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils.data import DataLoader, TensorDataset

from mmbalance.errors import ConfigError
from mmbalance.methods.agm import AGM, shapley_shares
from mmbalance.methods.mlb import MLB
from mmbalance.methods.mmcosine import MMCosine
from mmbalance.methods.mslr import MSLR, mslr_scale
from mmbalance.methods.ogm import OGM, OGMGE
from mmbalance.methods.pmr import PMR, prototype_weights
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch


def _model(num_classes=3):
    torch.manual_seed(0)
    encoders = {"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 4, hidden=6, layers=1)}
    return MultimodalModel(encoders, num_classes)


def _batch():
    gen = torch.Generator().manual_seed(3)
    x = {"a": torch.randn(6, 5, generator=gen), "v": torch.randn(6, 3, generator=gen)}
    return x, torch.tensor([0, 1, 2, 0, 1, 2])


# OGM / OGM-GE


def test_ogm_ge_noise_is_the_draw_of_seed_plus_step_times_std_plus_1e_8():
    method = OGMGE(_model())
    method.noise_seed = 7
    method.noise_steps.fill_(3)
    grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    want = torch.randn((2, 3), generator=torch.Generator().manual_seed(10)) * (math.sqrt(3.5) + 1e-8)
    assert torch.allclose(method._noise(grad, {}), want, rtol=1e-6, atol=0)
    # a constant gradient (std 0) still gets N(0, 1e-8): the sign of each draw is kept
    flat = method._noise(torch.full((2, 3), 2.0), {})
    want = torch.randn((2, 3), generator=torch.Generator().manual_seed(10)) * 1e-8
    assert torch.allclose(flat, want, rtol=1e-5, atol=0)


def test_ogm_ge_noise_of_a_double_gradient_is_double():
    method = OGMGE(_model())
    method.noise_seed, grad = 11, torch.zeros(3, 4, dtype=torch.float64)
    noise = method._noise(grad, {})
    assert noise.dtype == torch.float64
    want = torch.randn((3, 4), generator=torch.Generator().manual_seed(11), dtype=torch.float64) * 1e-8
    assert torch.allclose(noise, want, rtol=1e-9, atol=0)


def test_ogm_noise_seed_is_the_run_seed_modulo_2_to_the_31_and_steps_count_exactly():
    model = _model()
    torch.manual_seed(2**31 + 5)
    method = OGMGE(model)
    assert method.noise_seed == 5
    assert method.noise_steps.dtype == torch.long and int(method.noise_steps) == 0


def test_a_fresh_ogm_is_in_epoch_zero():
    # no on_epoch_start yet: epoch 0, inside the window [0, 0]
    method = OGM(_model(), OGM.Hyperparameters(start_epoch=0, end_epoch=0))
    method.coefficients.copy_(torch.tensor([0.25, 1.0]))
    for p in method.parameters():
        p.grad = torch.ones_like(p)
    method.after_backward()
    weight = method.model.encoders["a"].net[0].weight
    assert torch.all(weight.grad == 0.25)


def test_ogm_skips_a_frozen_weight_and_still_scales_the_next():
    method = OGM(_model())
    method.coefficients.copy_(torch.tensor([0.25, 1.0]))
    for p in method.parameters():
        p.grad = torch.ones_like(p)
    first, second = method.model.encoders["a"].net[0].weight, method.model.encoders["a"].net[2].weight
    first.grad = None
    method.after_backward()
    assert first.grad is None and torch.all(second.grad == 0.25)


def test_ogm_scales_a_two_element_weight_and_leaves_a_one_element_one():
    # a single-element weight is left alone (OGM-GE's std of one element would be NaN)
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(1, 1, hidden=2, layers=1), "v": MLPEncoder(1, 1, hidden=1, layers=1)}, 3)
    method = OGM(model)
    assert [tuple(p.shape) for p in method.modulated_parameters("a")] == [(2, 1), (1, 2)]
    assert list(method.modulated_parameters("v")) == []
    method = OGMGE(model)
    method.coefficients.copy_(torch.tensor([0.5, 0.5]))
    for p in method.parameters():
        p.grad = torch.ones_like(p)
    method.after_backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters())


@pytest.mark.parametrize("cls", [OGM, AGM, MSLR, MMCosine])
def test_the_loss_has_one_term_named_task(cls):
    method = cls(_model())
    x, y = _batch()
    out = method(x)
    terms = method.training_loss(Batch(x, y), out)
    assert set(terms.terms) == {"task"}
    assert torch.allclose(terms.terms["task"], F.cross_entropy(out.logits, y), atol=1e-6)


# AGM


def test_agm_scores_are_each_shares_cross_entropy_and_start_at_epoch_zero():
    method = AGM(_model(), AGM.Hyperparameters(end_epoch=0))
    assert method.epoch == 0 and method.steps.dtype == torch.long
    x, y = _batch()
    out = method(x)
    shares = shapley_shares(method.coalition_outputs(x, out.logits), ["a", "v"])
    want = [float(F.cross_entropy(shares[m].detach(), y)) for m in ("a", "v")]
    method.training_loss(Batch(x, y), out)
    # first step: the running means are this step's scores s_m = mean -log p_m[y]
    assert method.running_scores.tolist() == pytest.approx(want, rel=1e-5)
    # epoch 0 <= end_epoch 0 without on_epoch_start: the coefficients are updated
    gap = want[0] - want[1]  # r_a = exp(s_v - s_a), target 1 (running means were 0)
    assert method.coefficients.tolist() == pytest.approx([math.exp(1 - math.exp(-gap)), math.exp(1 - math.exp(gap))],
                                                         rel=1e-5)


def _agm_grads(method, weight, bias):
    for p in method.parameters():
        p.grad = torch.full_like(p, 0.5)
    for p in method.model.fusion_parameters():
        p.grad = torch.full_like(p, weight if p.dim() >= 2 else bias)


def test_agm_clips_only_past_one_and_looks_at_fusion_weights_only():
    method = AGM(_model())
    _agm_grads(method, weight=1.0, bias=0.5)
    assert method.after_backward()["clipped"] == 0.0  # exactly 1 is inside [-1, 1]
    _agm_grads(method, weight=1.5, bias=0.5)
    assert method.after_backward()["clipped"] == 1.0
    _agm_grads(method, weight=0.5, bias=5.0)  # the bias is not a fusion weight
    assert method.after_backward()["clipped"] == 0.0


# MSLR


def test_mslr_keeps_the_initial_scale_when_the_past_accuracies_are_zero():
    assert mslr_scale(0.7, 0.4, [0.0, 0.0], window=2) == 0.7


def test_mslr_default_scales_are_one_and_bad_settings_are_refused():
    assert MSLR(_model()).lr_scales.tolist() == [1.0, 1.0]
    for hp in (MSLR.Hyperparameters(init_scales=[1.0, 1.0], window=0),
               MSLR.Hyperparameters(init_scales=[0.0, 1.0]),
               MSLR.Hyperparameters(init_scales=[1.0])):
        with pytest.raises(ConfigError, match=r"one per modality: a, v\) and method.window >= 1"):
            MSLR(_model(), hp)


def test_mslr_accuracy_counts_every_validation_batch_even_a_single_sample():
    method = MSLR(_model())
    x, y = _batch()
    correct = [0, 0]
    for rows in (slice(0, 4), slice(4, 6)):
        out = method({m: v[rows] for m, v in x.items()})
        shares = method.model.fusion.contributions(out.features)
        for i, m in enumerate(("a", "v")):
            correct[i] += sum(int(p == t) for p, t in zip(shares[m].argmax(-1).tolist(), y[rows].tolist()))
        method.on_validation_batch(out, y[rows])
    logs = method.on_validation_end({})
    assert [logs["val_accuracy/a"], logs["val_accuracy/v"]] == pytest.approx([c / 6 for c in correct])
    out = method({m: v[:1] for m, v in x.items()})
    method.on_validation_batch(out, y[:1])
    assert set(method.on_validation_end({})) == {"lr_scale/a", "val_accuracy/a", "lr_scale/v", "val_accuracy/v"}


# MLB


def test_mlb_unimodal_terms_are_the_weight_times_each_heads_loss():
    method = MLB(_model(), MLB.Hyperparameters(unimodal_weight=0.3))
    x, y = _batch()
    out = method(x)
    terms = method.training_loss(Batch(x, y), out).terms
    for m in ("a", "v"):
        assert float(terms[f"unimodal/{m}"].detach()) == pytest.approx(0.3 * float(F.cross_entropy(out.unimodal_logits[m].detach(), y)),
                                                              rel=1e-5)


# PMR


def test_pmr_first_tenth_is_a_reshuffle_seeded_by_seed_plus_epoch():
    # 15 batches of 2 -> 15 // 10 = 1 batch; a tuple collate marks the loader's own collate_fn
    data = TensorDataset(torch.arange(30.0).unsqueeze(1), torch.arange(30))
    collate = lambda rows: ("mine", torch.stack([r[1] for r in rows]))  # noqa: E731
    loader = DataLoader(data, batch_size=2, collate_fn=collate)
    method = PMR(_model())
    method.seed = 4
    got = list(method._first_tenth(loader, epoch=3))
    # the same pass as a shuffled loader whose generator is seeded 4 + 3 = 7
    want = next(iter(DataLoader(data, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(7))))
    assert len(got) == 1 and got[0][0] == "mine"
    assert got[0][1].tolist() == want[1].tolist() and len(want[1]) == 2


def test_pmr_is_active_in_its_end_epoch():
    method = PMR(_model(), PMR.Hyperparameters(start_epoch=0, end_epoch=3))
    x, y = _batch()
    method.epoch = 3
    with torch.no_grad():
        for m in ("a", "v"):
            method.prototypes(m).copy_(torch.randn(method.prototypes(m).shape))
    method.training_loss(Batch(x, y), method(x))
    assert float(method.weights.sum()) > 0


def test_pmr_run_seed_fresh_epoch_and_a_class_seen_once():
    model = _model()
    torch.manual_seed(2**31 + 9)
    method = PMR(model)
    assert method.seed == 9 and method.epoch == 0
    # 10 batches -> the first one; class 2 appears once in it, class 1 twice, class 0 once
    gen = torch.Generator().manual_seed(5)
    loader = [({"a": torch.randn(4, 5, generator=gen), "v": torch.randn(4, 3, generator=gen)},
               torch.tensor([1, 2, 1, 0])) for _ in range(10)]
    assert method.on_epoch_start(0, loader) == {"prototype_classes": 3.0}
    model.eval()
    with torch.no_grad():
        feats = model.encoders["a"](loader[0][0]["a"])
    assert torch.allclose(method.prototypes("a")[2], feats[1], atol=1e-6)  # the one sample of class 2
    assert torch.allclose(method.prototypes("a")[1], (feats[0] + feats[2]) / 2, atol=1e-6)


def test_pmr_prototype_weights_keep_the_scores_dtype():
    weights = prototype_weights(torch.tensor([1.0, 2.0], dtype=torch.float64), 0.5)
    assert weights.dtype == torch.float64 and weights.tolist() == [0.5, 0.0]


def _lazy_model():
    # nn.Linear declares no out_dim: the feature sizes come from the first batch
    return MultimodalModel({"a": nn.Linear(5, 4), "v": nn.Linear(3, 2)}, 3)


def test_pmr_prototypes_of_a_lazy_model_are_sized_by_its_first_batch_or_a_checkpoint():
    torch.manual_seed(0)
    model = _lazy_model()
    method = PMR(model)
    assert not model.materialized and is_lazy(method.prototypes("a"))
    x, _ = _batch()
    model.materialize(x)
    assert tuple(method.prototypes("a").shape) == (3, 4) and tuple(method.prototypes("v").shape) == (3, 2)
    assert float(method.prototypes("a").abs().sum()) == 0.0
    method.prototypes("v").fill_(1.5)
    fresh = PMR(_lazy_model())
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.prototypes("v"), torch.full((3, 2), 1.5))


def test_mmcosine_of_a_lazy_model_checks_its_weights_at_the_first_batch():
    torch.manual_seed(0)
    method = MMCosine(_lazy_model())  # nothing to check yet
    x, _ = _batch()
    out = method(x)
    assert out.logits.shape == (6, 3)


def test_mmcosine_refuses_a_fusion_weight_of_the_wrong_shape_at_once():
    model = _model()
    model.fusion.weights["v"] = nn.Linear(4, 4, bias=False)  # (4, 4): one weight, but not (C, D) = (3, 4)
    with pytest.raises(ConfigError, match=r"method 'mmcosine' needs one \(3, 4\) fusion weight for modality 'v'"):
        MMCosine(model)


def test_mmcosine_output_carries_the_encoder_features():
    method = MMCosine(_model())
    x, _ = _batch()
    out = method(x)
    feats = method.model.encode(x)
    assert set(out.features) == {"a", "v"}
    assert all(torch.allclose(out.features[m], feats[m]) for m in ("a", "v"))
