"""Any nn.Module is an encoder: feature sizes come from the first batch, an
optimizer built before it still trains everything, and tuple/dict/sequence outputs work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import is_lazy

import mmbalance as mb
from mmbalance import ConfigError, MultimodalModel
from mmbalance.engine import train_step
from mmbalance.methods import get_method
from mmbalance.models import Select
from mmbalance.types import Batch

B, C = 24, 3


class DictEncoder(nn.Module):
    """Returns a dict, as many backbones do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 6)

    def forward(self, x):
        return {"features": self.net(x), "aux": x.sum(1)}


class TimeFirst(nn.Module):
    """(B, T, D) -> (T, B, D), as a layer without batch_first returns it."""

    def forward(self, x):
        return x.transpose(0, 1)


def _encoders():
    return {"a": nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8)),  # a plain Sequential
            "v": Select(nn.LSTM(3, 7, batch_first=True), 0),                   # a tuple of (B, T, 7) sequences
            "t": Select(DictEncoder(), "features")}                            # a dict


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    x = {"a": torch.randn(B, 5, generator=g) + y[:, None], "v": torch.randn(B, 4, 3, generator=g),
         "t": torch.randn(B, 4, generator=g)}
    return x, y


def _lazy_params(*modules):
    return [n for m in modules for n, p in [*m.named_parameters(), *m.named_buffers()] if is_lazy(p)]


def test_sizes_come_from_the_first_batch_and_an_early_optimizer_trains_everything():
    torch.manual_seed(0)
    model = MultimodalModel(_encoders(), num_classes=C)
    assert not model.materialized and _lazy_params(model)
    mcr = mb.MCRLoss(ceb_weight=1.0).bind(model)  # before any batch: placeholders
    params = [*model.parameters(), *mcr.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)       # before any batch, as a user writes it
    x, y = _data()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out.logits, y) + mcr(model, out, y).total
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.feature_dims == {"a": 8, "v": 7, "t": 6}
    assert out.features["v"].shape == (B, 7) and out.logits.shape == (B, C)
    assert not _lazy_params(model, mcr) and losses[-1] < losses[0]
    in_opt = {id(p) for p in params}  # the live modules hold the very objects the optimizer steps
    for module in (model.heads, model.fusion, mcr.projections, mcr.ceb_head):
        assert all(id(p) in in_opt for p in module.parameters())
    for m in model.modalities:
        assert model.fusion.weights[m].weight.shape == (C, model.feature_dims[m])
        assert model.fusion.weights[m].weight.grad is not None
    assert mcr.projections["a"].weight.shape == (6, 8) and mcr.projections["a"].weight.grad is not None


def _steps(name, model, steps=12, **hp):
    method = get_method(name)(model, get_method(name).Hyperparameters(init="scratch", **hp))
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)  # before the first batch
    x, y = _data()
    losses = [train_step(method, Batch(x, y), opt).total.item() for _ in range(steps)]
    return method, losses


@pytest.mark.parametrize("name", ["joint", "mcr", "ogm_ge", "pmr", "mmcosine"])
def test_methods_train_a_model_that_has_not_seen_a_batch(name):
    torch.manual_seed(0)
    model = MultimodalModel(_encoders(), num_classes=C)
    method = get_method(name)(model, get_method(name).Hyperparameters(init="scratch"))
    if name == "pmr":  # its epoch hook encodes training batches before any step
        x, y = _data()
        method.on_epoch_start(0, [(x, y)])
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    x, y = _data()
    losses = [train_step(method, Batch(x, y), opt).total.item() for _ in range(12)]
    assert all(torch.isfinite(torch.tensor(losses))) and not _lazy_params(method)
    if name in ("joint", "mcr", "mmcosine"):
        assert losses[-1] < losses[0], losses


def test_a_state_dict_sizes_a_fresh_model_and_method():
    torch.manual_seed(0)
    method, _ = _steps("mcr", MultimodalModel(_encoders(), num_classes=C), steps=3, ceb_weight=0.5)
    state = method.state_dict()
    fresh = get_method("mcr")(MultimodalModel(_encoders(), num_classes=C),
                              get_method("mcr").Hyperparameters(init="scratch", ceb_weight=0.5))
    fresh.load_state_dict(state)
    x, _ = _data(1)
    method.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x).logits, method(x).logits)
    assert fresh.state_dict().keys() == state.keys()

    pmr = get_method("pmr")(MultimodalModel(_encoders(), num_classes=C))
    pmr.on_epoch_start(0, [_data()])
    again = get_method("pmr")(MultimodalModel(_encoders(), num_classes=C))
    again.load_state_dict(pmr.state_dict())
    torch.testing.assert_close(again.prototypes("v"), pmr.prototypes("v"))


def test_sequence_outputs_are_pooled_and_the_batch_axis_is_checked():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(6, 2, dim_feedforward=12, batch_first=True)
    seq = nn.Sequential(nn.Linear(3, 6), nn.TransformerEncoder(layer, 1, enable_nested_tensor=False))
    x = {"s": torch.randn(4, 5, 3), "a": torch.randn(4, 2)}
    for pool, reduce in (("mean", lambda h: h.mean(1)), ("max", lambda h: h.amax(1)),
                         ("first", lambda h: h[:, 0]), ("last", lambda h: h[:, -1])):
        model = MultimodalModel({"s": seq, "a": nn.Linear(2, 3)}, C, sequence_pool=pool).eval()
        torch.testing.assert_close(model(x).features["s"], reduce(seq.eval()(x["s"])))
    with pytest.raises(ConfigError, match="sequence_pool"):
        MultimodalModel({"s": seq, "a": nn.Linear(2, 3)}, C, sequence_pool="sum")
    time_first = MultimodalModel({"s": TimeFirst(), "a": nn.Linear(2, 3)}, C)
    with pytest.raises(ConfigError, match="batch axis must come first"):
        time_first(x)


def test_wrong_outputs_say_what_to_do():
    x = {"a": torch.randn(4, 3), "b": torch.randn(4, 2)}
    with pytest.raises(ConfigError, match=r"returned a tuple.*Select\(encoder, 0\)"):
        MultimodalModel({"a": nn.GRU(3, 4, batch_first=True), "b": nn.Linear(2, 3)}, C)(
            {"a": torch.randn(4, 5, 3), "b": x["b"]})
    with pytest.raises(ConfigError, match=r"returned a dict.*Select"):
        MultimodalModel({"a": DictEncoder(), "b": nn.Linear(2, 3)}, C)({"a": torch.randn(4, 4), "b": x["b"]})
    with pytest.raises(ConfigError, match="nn.Flatten"):
        MultimodalModel({"a": nn.Conv2d(1, 2, 3), "b": nn.Linear(2, 3)}, C)(
            {"a": torch.randn(4, 1, 5, 5), "b": x["b"]})
    declared = MultimodalModel({"a": nn.Linear(3, 5), "b": nn.Linear(2, 3)}, C, feature_dims={"a": 4})
    with pytest.raises(ConfigError, match="declares 4 features .* returned 5"):
        declared(x)
    with pytest.raises(ConfigError, match="names modality 'c'"):
        MultimodalModel({"a": nn.Linear(3, 5), "b": nn.Linear(2, 3)}, C, feature_dims={"c": 4})


def test_materialize_is_a_dry_run_and_feature_dims_stays_an_override():
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model = MultimodalModel({"a": bn, "b": nn.Linear(2, 5)}, C).train()
    model.materialize({"a": torch.randn(6, 3), "b": torch.randn(6, 2)})
    assert model.feature_dims == {"a": 4, "b": 5} and model.training
    assert int(bn[1].num_batches_tracked) == 0  # eval mode: no statistics moved
    fixed = MultimodalModel({"a": nn.Linear(3, 4), "b": nn.Linear(2, 5)}, C, feature_dims={"a": 4, "b": 5})
    assert fixed.materialized and not _lazy_params(fixed)


def test_a_first_batch_under_inference_mode_leaves_trainable_parameters():
    model = MultimodalModel({"a": nn.Linear(3, 4), "b": nn.Linear(2, 5)}, C)
    x = {"a": torch.randn(6, 3), "b": torch.randn(6, 2)}
    with torch.inference_mode():
        model(x)
    loss = model(x).logits.sum()
    loss.backward()
    assert model.fusion.bias.grad is not None


def test_ddp_wraps_a_materialized_model(tmp_path):
    model = MultimodalModel({"a": nn.Linear(3, 4), "b": nn.Sequential(nn.Linear(2, 5))}, C)
    x = {"a": torch.randn(6, 3), "b": torch.randn(6, 2)}
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model.materialize(x))
        ddp(x).logits.sum().backward()
        assert model.fusion.weights["b"].weight.grad.shape == (C, 5)
    finally:
        torch.distributed.destroy_process_group()


def test_input_perturbations_reencode_through_the_models_pooling():
    torch.manual_seed(0)
    model = MultimodalModel(_encoders(), num_classes=C)
    mcr = mb.MCRLoss(perturbation="input_noise", num_permutations=2, contrastive_weight=0.0).bind(model)
    x, y = _data()
    out = model(x)
    reg = mcr(model, out, y, inputs=x)
    assert torch.isfinite(reg.total) and reg.terms["mipd"].requires_grad


def test_the_lightning_loop_asks_for_a_sized_model():
    from mmbalance.training import BalanceModule

    from ..conftest import tiny_config

    method = get_method("joint")(MultimodalModel(_encoders(), num_classes=C))
    with pytest.raises(ConfigError, match="materialize"):
        BalanceModule(method, tiny_config("joint")).configure_optimizers()
