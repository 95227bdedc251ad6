"""The machinery every method shares, driven directly with tiny models (no training run):
hyperparameter declarations and search ranges, ``register`` and the common options it adds,
``get_method``'s message, the requirement and ``method.init`` checks, stages and
``load_stages``, ``optimizer_groups``' encoder split, ``multiloss_terms``,
``all_reduce_mean`` under a (faked) process group, the ensemble's combiners, the unimodal,
joint and Uni-Pre methods, MCR's inputs and logs. Each expectation is written out by hand."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmbalance.errors import ConfigError
from mmbalance.methods import MLB, REGISTRY, Ensemble, Joint, MCR, MSLR, MultiLoss, PMR, Unimodal, get_method
from mmbalance.methods.base import Method, NoHyperparameters, _with_common_options, register, zero_like_loss
from mmbalance.methods.hparams import SEARCH, Search, choice, hparam, int_range, log_uniform, searched, uniform
from mmbalance.methods.pipeline import Stage, unimodal_stages
from mmbalance.methods.unipre import UniPreFinetuned, UniPreFrozen
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.types import Batch, ModelOutput


def _model(num_classes=3, fusion="concat_linear", names=("a", "v")):
    torch.manual_seed(0)
    encoders = {names[0]: MLPEncoder(5, 4, hidden=6, layers=1), names[1]: MLPEncoder(3, 4, hidden=6, layers=1)}
    return MultimodalModel(encoders, num_classes, fusion=fusion, fusion_hidden=4)


def _batch(names=("a", "v")):
    gen = torch.Generator().manual_seed(3)
    x = {names[0]: torch.randn(6, 5, generator=gen), names[1]: torch.randn(6, 3, generator=gen)}
    return Batch(x, torch.tensor([0, 1, 2, 0, 1, 2]))


def _ids(params):
    return [id(p) for p in params]


# hparams: the search ranges and the field helper


class _Trial:
    """Records each suggest call; ``log`` has no default, so a call must pass it."""

    def __init__(self):
        self.calls = []

    def suggest_float(self, key, low, high, *, log):
        self.calls.append(("float", key, low, high, log))
        return low

    def suggest_int(self, key, low, high, *, log):
        self.calls.append(("int", key, low, high, log))
        return high

    def suggest_categorical(self, key, options):
        self.calls.append(("choice", key, options))
        return options[-1]


def test_search_constructors_are_exact():
    assert uniform(0.1, 0.5) == Search("float", 0.1, 0.5, False, ())
    assert log_uniform(0.01, 2.0) == Search("float", 0.01, 2.0, True, ())
    assert int_range(1, 7) == Search("int", 1, 7, False, ())
    assert int_range(2, 64, log=True) == Search("int", 2, 64, True, ())
    assert choice(["x", "y"]) == Search("choice", None, None, False, ("x", "y"))


def test_search_suggest_passes_kind_bounds_and_log_to_the_trial():
    trial = _Trial()
    assert uniform(0.1, 0.5).suggest(trial, "u") == 0.1
    assert log_uniform(0.01, 2.0).suggest(trial, "l") == 0.01
    assert int_range(1, 7).suggest(trial, "i") == 7
    assert int_range(2, 64, log=True).suggest(trial, "j") == 64
    assert choice(("x", "y")).suggest(trial, "c") == "y"
    assert trial.calls == [("float", "u", 0.1, 0.5, False), ("float", "l", 0.01, 2.0, True),
                           ("int", "i", 1, 7, False), ("int", "j", 2, 64, True), ("choice", "c", ["x", "y"])]
    for call in trial.calls[:4]:
        assert type(call[-1]) is bool


def test_hparam_fields_defaults_copies_and_search_metadata():
    @dataclass
    class H:
        plain: float = hparam(0.5)
        ranged: int = hparam(3, search=int_range(1, 9))
        listed: list = hparam([1, 2], search=choice([[1], [1, 2]]))
        mapping: dict = hparam({"k": 1})

    fields = {f.name: f for f in dataclasses.fields(H)}
    assert dict(fields["plain"].metadata) == {} and dict(fields["mapping"].metadata) == {}
    assert dict(fields["ranged"].metadata) == {SEARCH: Search("int", 1, 9, False, ())}
    assert fields["listed"].metadata[SEARCH] == Search("choice", choices=([1], [1, 2]))
    one, two = H(), H()
    assert (one.plain, one.ranged, one.listed, one.mapping) == (0.5, 3, [1, 2], {"k": 1})
    assert type(one.listed) is list and type(one.mapping) is dict
    one.listed.append(3)
    one.mapping["k"] = 2
    assert two.listed == [1, 2] and two.mapping == {"k": 1}  # a fresh copy per instance
    assert searched(H) == {"ranged": Search("int", 1, 9, False, ()),
                           "listed": Search("choice", choices=([1], [1, 2]))}


# register, the common options, get_method


def test_with_common_options_adds_init_encoder_lr_scale_and_stage_lr():
    class Fresh(Method):
        name = "fresh_for_test"
        default_init = "unimodal"

        @dataclass
        class Hyperparameters:
            """Fresh's own options."""
            alpha: float = hparam(0.5, search=uniform(0.0, 1.0))

    declared = Fresh.Hyperparameters
    new = _with_common_options(Fresh)
    assert new is not declared and issubclass(new, declared) and new._declared is declared
    assert new.__name__ == "Hyperparameters" and new.__qualname__ == f"{Fresh.__qualname__}.Hyperparameters"
    assert new.__module__ == __name__ and new.__doc__ == "Fresh's own options."
    fields = {f.name: f for f in dataclasses.fields(new)}
    assert list(fields) == ["alpha", "init", "encoder_lr_scale", "stage_lr"]
    assert [fields[k].type for k in ("init", "encoder_lr_scale", "stage_lr")] == [str, float, Optional[float]]
    hp = new()
    assert (hp.alpha, hp.init, hp.encoder_lr_scale, hp.stage_lr) == (0.5, "unimodal", 0.1, None)
    assert searched(new) == {"alpha": Search("float", 0.0, 1.0, False, ())}

    class Child(Fresh):  # inherits the built class: rebuilt from the declared one for its own default
        name = "child_for_test"
        default_init = "scratch"

    Fresh.Hyperparameters = new
    child = _with_common_options(Child)
    assert child._declared is declared and child.__qualname__ == f"{Child.__qualname__}.Hyperparameters"
    assert child().init == "scratch" and new().init == "unimodal"
    assert [f.name for f in dataclasses.fields(child)] == ["alpha", "init", "encoder_lr_scale", "stage_lr"]


def test_with_common_options_keeps_declared_options_and_returns_a_complete_class_as_is():
    class Partial(Method):
        name = "partial_for_test"

        @dataclass
        class Hyperparameters:
            encoder_lr_scale: float = 0.5

    new = _with_common_options(Partial)
    assert [f.name for f in dataclasses.fields(new)] == ["encoder_lr_scale", "init", "stage_lr"]
    assert (new().encoder_lr_scale, new().init) == (0.5, "scratch")

    class Complete(Method):
        name = "complete_for_test"

        @dataclass
        class Hyperparameters:
            init: str = "unimodal"
            encoder_lr_scale: float = 1.0
            stage_lr: Optional[float] = 0.01

    assert _with_common_options(Complete) is Complete.Hyperparameters
    assert UniPreFinetuned.Hyperparameters().encoder_lr_scale == 0.1  # declared, with its search range
    assert "encoder_lr_scale" in searched(UniPreFinetuned.Hyperparameters)


def test_register_adds_the_class_and_refuses_empty_or_taken_names():
    class Fresh(Method):
        name = "registered_for_test"

    class Nameless(Method):
        pass

    class Taken(Method):
        name = "joint"

    try:
        assert register(Fresh) is Fresh
        assert REGISTRY["registered_for_test"] is Fresh
        assert Fresh.Hyperparameters is not NoHyperparameters and Fresh.Hyperparameters().init == "scratch"
        with pytest.raises(ValueError) as err:
            register(Nameless)
        assert str(err.value) == "cannot register Nameless: name '' is empty or taken"
        with pytest.raises(ValueError) as err:
            register(Taken)
        assert str(err.value) == "cannot register Taken: name 'joint' is empty or taken"
        assert REGISTRY["joint"] is Joint
    finally:
        REGISTRY.pop("registered_for_test", None)
        REGISTRY.pop("", None)


def test_get_method_and_its_message():
    assert get_method("joint") is Joint and get_method("mslr") is MSLR
    with pytest.raises(ConfigError) as err:
        get_method("joimt")
    assert str(err.value) == "unknown method 'joimt'; did you mean joint? valid: " + ", ".join(REGISTRY)
    assert ", ".join(REGISTRY).startswith("unimodal, ensemble, joint, ")


def test_hyperparameter_defaults():
    assert MultiLoss.hyperparameter_defaults() == {"unimodal_weight": 1.0, "init": "scratch",
                                                   "encoder_lr_scale": 0.1, "stage_lr": None}
    assert Ensemble.hyperparameter_defaults() == {"combine": "standardized_sum", "init": "unimodal",
                                                  "encoder_lr_scale": 0.1, "stage_lr": None}


# Method.__init__, check_requirements, stages


class _Bare(Method):
    """Not registered: its hyperparameters have no ``init`` (``NoHyperparameters``)."""

    name = "bare"


class _BareUnimodalOnly(Method):
    name = "bare_unimodal_only"
    init_choices = ("unimodal",)


def test_hyperparameters_without_init_start_from_scratch():
    model = _model()
    method = _Bare(model)
    assert method.model is model and type(method.hparams) is NoHyperparameters
    assert _Bare.stages(["a", "v"]) == [] and method.optimizer_groups() == method.param_groups()
    with pytest.raises(ConfigError) as err:
        _BareUnimodalOnly(model)
    assert str(err.value) == "method 'bare_unimodal_only': method.init 'scratch' is not possible; valid: unimodal"
    with pytest.raises(ConfigError) as err:
        Joint(model, Joint.Hyperparameters(init="pretrained"))
    assert str(err.value) == "method 'joint': method.init 'pretrained' is not possible; valid: scratch, unimodal"


def test_requirement_messages_are_exact_and_sorted():
    with pytest.raises(ConfigError) as err:
        PMR(MultimodalModel({"a": MLPEncoder(2, 2), "v": MLPEncoder(2, 2)}, 1))
    assert str(err.value) == "method 'pmr' needs classification; the model is a regressor"

    class Both(Method):
        name = "both"
        requires = frozenset({"decomposable_fusion", "classification"})

    with pytest.raises(ConfigError) as err:  # the two checks in sorted order: classification first
        Both(MultimodalModel({"a": MLPEncoder(2, 2), "v": MLPEncoder(2, 2)}, 1, fusion="concat_mlp"))
    assert str(err.value) == "method 'both' needs classification; the model is a regressor"
    with pytest.raises(ConfigError) as err:
        Both(_model(fusion="concat_mlp"))
    assert str(err.value) == ("method 'both' needs a decomposable fusion (each modality's additive share of a "
                              "linear fusion); use model.fusion=concat_linear (got ConcatMLP)")


def test_stages_follow_the_given_or_default_init():
    want = [Stage("unimodal_a", "unimodal", {"modality": "a"}, "a"), Stage("unimodal_v", "unimodal", {"modality": "v"}, "v")]
    assert unimodal_stages(["a", "v"]) == want
    assert Ensemble.stages(["a", "v"]) == want  # default init of the ensemble: unimodal
    assert Joint.stages(["a", "v"]) == []
    assert Joint.stages(["a", "v"], Joint.Hyperparameters(init="unimodal")) == want
    assert Ensemble.stages(["a", "v"], Ensemble.Hyperparameters(init="scratch")) == []


# load_stages, optimizer_groups


def test_load_stages_copies_each_stages_encoder_and_head_only():
    stage_models = {m: _model() for m in ("a", "v")}
    for i, model in enumerate(stage_models.values()):
        with torch.no_grad():
            for j, p in enumerate(model.parameters()):
                p.fill_(10 * (i + 1) + j)
    states = {f"unimodal_{m}": Unimodal(stage_models[m], Unimodal.Hyperparameters(modality=m)).state_dict()
              for m in ("a", "v")}
    method = Joint(_model(), Joint.Hyperparameters(init="unimodal"))
    fusion = [p.detach().clone() for p in method.model.fusion.parameters()]
    method.load_stages(states)
    for m in ("a", "v"):
        for part in ("encoders", "heads"):
            got = getattr(method.model, part)[m].state_dict()
            want = getattr(stage_models[m], part)[m].state_dict()
            assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in got)
    assert all(torch.equal(p, q) for p, q in zip(method.model.fusion.parameters(), fusion))  # untouched
    assert torch.equal(method.model.encoders["a"].state_dict()[next(iter(method.model.encoders["a"].state_dict()))],
                       torch.full_like(next(iter(method.model.encoders["a"].parameters())), 10.0))


def test_optimizer_groups_split_the_encoders_after_unimodal_stages():
    method = MSLR(_model(), MSLR.Hyperparameters(init="unimodal", encoder_lr_scale=0.25))
    model = method.model
    groups = method.optimizer_groups()
    enc = {m: list(model.modality_parameters(m)) for m in ("a", "v")}
    rest = {m: list(model.head_parameters(m)) + list(model.fusion.modality_parameters(m)) for m in ("a", "v")}
    assert [(g.get("modality"), g["lr_scale"], g["init_scale"]) for g in groups] == [
        ("a", 1.0, 0.25), ("a", 1.0, 1.0), ("v", 1.0, 0.25), ("v", 1.0, 1.0), (None, 1.0, 1.0)]
    assert [_ids(g["params"]) for g in groups[:4]] == [_ids(enc["a"]), _ids(rest["a"]), _ids(enc["v"]),
                                                       _ids(rest["v"])]
    assert sorted(k for g in groups for k in g) == sorted(
        ["params", "modality", "lr_scale", "init_scale"] * 4 + ["params", "lr_scale", "init_scale"])


def test_optimizer_groups_unsplit_from_scratch_or_at_scale_one_and_frozen_encoders_drop_out():
    for hp in (Joint.Hyperparameters(init="scratch", encoder_lr_scale=0.25),
               Joint.Hyperparameters(init="unimodal", encoder_lr_scale=1.0)):
        method = Joint(_model(), hp)
        groups = method.optimizer_groups()
        assert len(groups) == 1 and list(groups[0]) == ["params"]
        assert _ids(groups[0]["params"]) == _ids(method.parameters())
    frozen = UniPreFrozen(_model())  # encoders frozen: only the rest, at scale 1
    groups = frozen.optimizer_groups()
    assert [g["init_scale"] for g in groups] == [1.0]
    assert _ids(groups[0]["params"]) == _ids(p for p in frozen.parameters() if p.requires_grad)

    @dataclass
    class OnlyInit:  # no encoder_lr_scale: scale 1, nothing to split
        init: str = "unimodal"

    bare = _Bare(_model(), OnlyInit())
    assert bare.optimizer_groups() == bare.param_groups()


# loss helpers


def test_multiloss_terms_weight_each_head_and_keep_the_fused_task():
    method = MultiLoss(_model(), MultiLoss.Hyperparameters(unimodal_weight=0.5))
    batch = _batch()
    out = method(batch.inputs)
    terms = method.multiloss_terms(out, batch.labels, 0.5)
    assert list(terms) == ["task", "unimodal/a", "unimodal/v"]
    assert torch.allclose(terms["task"], F.cross_entropy(out.logits, batch.labels))
    for m in ("a", "v"):
        assert torch.allclose(terms[f"unimodal/{m}"], 0.5 * F.cross_entropy(out.unimodal_logits[m], batch.labels))
    loss = method.training_loss(batch, out)
    assert torch.allclose(loss.total, sum(terms.values()))


def test_joint_and_unimodal_loss_is_one_task_term():
    batch = _batch()
    joint = Joint(_model())
    out = joint(batch.inputs)
    loss = joint.training_loss(batch, out)
    assert list(loss.terms) == ["task"] and torch.allclose(loss.total, F.cross_entropy(out.logits, batch.labels))
    uni = Unimodal(_model(), Unimodal.Hyperparameters(modality="v"))
    out = uni(batch.inputs)
    feats = uni.model.encoders["v"](batch.inputs["v"])
    assert list(out.features) == ["v"] and torch.allclose(out.features["v"], feats)
    assert torch.allclose(out.logits, uni.model.heads["v"](feats)) and out.unimodal_logits["v"] is out.logits
    loss = uni.training_loss(batch, out)
    assert list(loss.terms) == ["task"] and torch.allclose(loss.total, F.cross_entropy(out.logits, batch.labels))


def test_zero_like_loss_is_a_float_scalar_zero_on_the_logits_device():
    for device in ("cpu", "meta"):
        logits = torch.empty(4, 3, device=device)
        zero = zero_like_loss(ModelOutput(logits, {}, {}))
        assert zero.shape == () and zero.dtype == torch.float32 and zero.device.type == device
    assert zero_like_loss(ModelOutput(torch.ones(2, 2), {}, {})).item() == 0.0


def test_all_reduce_mean_alone_and_under_a_faked_process_group(monkeypatch):
    value = torch.tensor([1.0, 4.0], requires_grad=True)
    assert Method.all_reduce_mean(value) is value  # not distributed: itself
    dist = torch.distributed
    seen = []

    def all_reduce(t):  # three ranks holding the same value: the sum is 3x
        seen.append(t)
        t.mul_(3.0)

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    got = Method.all_reduce_mean(value)
    assert torch.equal(got, torch.tensor([1.0, 4.0])) and not got.requires_grad
    assert len(seen) == 1 and seen[0] is got and got is not value
    assert torch.equal(value.detach(), torch.tensor([1.0, 4.0]))  # the input is not changed


# ensemble


def _ensemble_out(za, zv):
    return ModelOutput(torch.zeros_like(za), {"a": za, "v": zv}, {})


def test_ensemble_standardized_sum_by_hand():
    method = Ensemble(_model(num_classes=2))
    za = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # mean 1.5, unbiased std sqrt(5/3)
    zv = torch.tensor([[0.1, 0.1], [0.1, 0.1]])  # constant: std 0, clamped: contributes zeros
    s = math.sqrt(5 / 3)
    want = torch.tensor([[-1.5 / s, -0.5 / s], [0.5 / s, 1.5 / s]])
    assert torch.allclose(method.predict(_ensemble_out(za, zv)), want, atol=1e-6)
    zv = torch.tensor([[0.0, 0.2], [0.0, 0.0]], dtype=torch.float16)  # mean 0.05, std 0.1
    want = want + torch.tensor([[-0.5, 1.5], [-0.5, -0.5]])
    assert torch.allclose(method.predict(_ensemble_out(za, zv)), want, atol=1e-3)
    assert method.predict(_ensemble_out(za, zv)).dtype == torch.float32


def test_ensemble_softmax_mean_and_regression_by_hand():
    method = Ensemble(_model(num_classes=2), Ensemble.Hyperparameters(combine="softmax_mean"))
    za = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # rows: (1/2, 1/2), (1/4, 3/4)
    zv = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])  # rows: (3/4, 1/4), (1/4, 3/4)
    want = torch.tensor([[0.625, 0.375], [0.25, 0.75]])  # (a softmax over the batch: [[5/8, 1/4], [3/8, 3/4]])
    assert torch.allclose(method.predict(_ensemble_out(za, zv)), want, atol=1e-6)
    reg = Ensemble(_model(num_classes=1))
    got = reg.predict(_ensemble_out(torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[3.0], [0.0], [4.0]])))
    assert torch.equal(got, torch.tensor([[2.0], [1.0], [4.0]]))


def test_ensemble_is_not_trained_and_refuses_an_unknown_combiner():
    method = Ensemble(_model())
    assert method.param_groups() == [] and method.model.modalities == ["a", "v"]
    with pytest.raises(RuntimeError) as err:
        method.training_loss(_batch(), method(_batch().inputs))
    assert str(err.value) == "the ensemble is not trained jointly; its stages train the unimodal models"
    with pytest.raises(ConfigError) as err:
        Ensemble(_model(), Ensemble.Hyperparameters(combine="mean"))
    assert str(err.value) == "method.combine 'mean' is unknown; valid: standardized_sum, softmax_mean"


# unimodal, Uni-Pre


def test_unimodal_messages_and_parameters():
    model = _model(names=("audio", "video"))
    with pytest.raises(ConfigError) as err:
        Unimodal(model)
    assert str(err.value) == ("method 'unimodal' needs method.modality, one of: audio, video "
                              "(e.g. --set method.modality=audio)")
    with pytest.raises(ConfigError) as err:
        Unimodal(model, Unimodal.Hyperparameters(modality="vidoe"))
    assert str(err.value) == "method.modality 'vidoe' is not a modality; did you mean video? valid: audio, video"
    method = Unimodal(model, Unimodal.Hyperparameters(modality="video"))
    want = list(model.modality_parameters("video")) + list(model.head_parameters("video"))
    assert [_ids(g["params"]) for g in method.param_groups()] == [_ids(want)]


def test_unipre_frozen_freezes_the_encoders_and_keeps_them_in_eval_mode():
    method = UniPreFrozen(_model())
    model = method.model
    assert not any(p.requires_grad for m in ("a", "v") for p in model.modality_parameters(m))
    assert all(p.requires_grad for p in model.fusion.parameters())
    assert method.train() is method
    assert method.training and model.training and model.fusion.training and model.heads.training
    assert not model.encoders.training and not any(mod.training for mod in model.encoders.modules())
    method.eval()
    assert not model.fusion.training


# MCR


def test_mcr_passes_the_inputs_and_the_regularizers_logs():
    # input_zero re-encodes the batch's inputs: without them MCRLoss raises
    hp = MCR.Hyperparameters(init="scratch", perturbation="input_zero", num_permutations=2)
    method = MCR(_model(), hp)
    batch = _batch()
    out = method(batch.inputs)
    loss = method.training_loss(batch, out)
    assert list(loss.terms) == ["task", "unimodal/a", "unimodal/v", "mipd", "contrastive", "ceb"]
    assert sorted(loss.logs) == ["mipd/a", "mipd/v"]
    reg = method.regularizer(method.model, out, batch.labels, inputs=batch.inputs)
    floats = lambda logs: {k: float(v) for k, v in logs.items()}  # noqa: E731
    assert floats(loss.logs) == pytest.approx(floats(reg.logs)) and all(v > 0 for v in loss.logs.values())
    assert torch.allclose(loss.terms["unimodal/a"], 1.0 * F.cross_entropy(out.unimodal_logits["a"], batch.labels))


# PMR: the two cases the method tests left open


def test_pmr_first_tenth_uses_an_unbatched_loader_as_is():
    method = PMR(_model())
    data = [({"a": torch.full((5,), float(i)), "v": torch.zeros(3)}, torch.tensor(i % 3)) for i in range(20)]
    loader = torch.utils.data.DataLoader(data, batch_size=None)  # yields samples, never reshuffled
    got = list(method._first_tenth(loader, epoch=0))
    assert len(got) == 2 and [float(x["a"][0]) for x, _ in got] == [0.0, 1.0]


def test_pmr_scores_are_the_per_sample_softmax_over_classes():
    # 1-D features, prototypes 0 (class 0) and 1 (class 1), labels (0, 0, 1):
    # a = (2.5, 2.5, 0.5): per-sample softmax(-distance)[label] = 1/(1+e), 1/(1+e), 1/2
    # v = (1.5, -2, -0.5):                                       1/(1+e), e/(1+e), 1/(1+e)
    # score_a = 2/(1+e) + 1/2 = 1.038 < score_v = 2/(1+e) + e/(1+e) = 1.269: the prototype loss is
    # a's. (A softmax over the batch instead would score a 0.789 > v 0.625 and weight v.)
    model = MultimodalModel({"a": MLPEncoder(1, 1, hidden=2, layers=1), "v": MLPEncoder(1, 1, hidden=2, layers=1)}, 2)
    method = PMR(model, PMR.Hyperparameters(alpha=2.0))
    for m in ("a", "v"):
        method.prototypes(m).copy_(torch.tensor([[0.0], [1.0]]))
    labels = torch.tensor([0, 0, 1])
    feats = {"a": torch.tensor([[2.5], [2.5], [0.5]]), "v": torch.tensor([[1.5], [-2.0], [-0.5]])}
    out = ModelOutput(torch.zeros(3, 2), {}, feats)
    loss = method.training_loss(Batch({}, labels), out)
    assert torch.equal(method.weights, torch.tensor([2.0, 0.0]))
    assert list(loss.terms) == ["task", "prototype/a"]
    want = 2.0 * F.cross_entropy(-torch.cdist(feats["a"], method.prototypes("a")), labels)
    assert torch.allclose(loss.terms["prototype/a"], want)


def test_pmr_first_tenth_uses_a_loader_without_batch_size_as_is():
    class Batches:  # has a dataset, but no batch_size to rebuild it with
        dataset = list(range(30))

        def __len__(self):
            return 30

        def __iter__(self):
            return iter(range(30))

    assert list(PMR(_model())._first_tenth(Batches(), epoch=0)) == [0, 1, 2]


# MLB with a user's fusion module


class _UserFusion(nn.Module):
    """A fusion module of the user's: no ``decomposable`` attribute, so not decomposable."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, features):
        return self.linear(torch.cat([features["a"], features["v"]], -1))


def test_mlb_modulates_encoder_and_head_only_under_a_fusion_without_decomposable():
    torch.manual_seed(0)
    encoders = {"a": MLPEncoder(5, 4, hidden=6, layers=1), "v": MLPEncoder(3, 4, hidden=6, layers=1)}
    method = MLB(MultimodalModel(encoders, 3, fusion=_UserFusion()))
    model = method.model
    for m in ("a", "v"):
        want = list(model.modality_parameters(m)) + list(model.head_parameters(m))
        assert _ids(method.modulated_parameters(m)) == _ids(want)
