"""Several optimizer steps per batch (Method.sub_steps) and staged schedules (Method.phase),
against the same updates written out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mmbalance import MultimodalModel
from mmbalance.engine import train_step
from mmbalance.errors import NonFiniteLossError
from mmbalance.methods.base import Method, Phase, SubStep
from mmbalance.training.module import BalanceModule
from mmbalance.types import Batch, LossTerms


class TwoSteps(Method):
    """Step ``a`` then step ``b``; each loss is CE of the shared head on one modality, each step
    updates that encoder and the head. ``scale`` multiplies b's loss (inf: non-finite)."""

    name = "two_steps_toy"
    requires = frozenset({"shared_head"})
    fusion = "shared_linear"
    scale = 1.0

    def sub_steps(self):
        head = tuple(self.model.fusion.head_parameters())
        return [SubStep(m, tuple(self.model.modality_parameters(m)) + head) for m in self.model.modalities]

    def sub_step_loss(self, step, batch, out):
        loss = F.cross_entropy(self.model.fusion.head(out.features[step.name]), batch.labels)
        return LossTerms.from_terms({"task": loss * (self.scale if step.name == "b" else 1.0)})

    def training_loss(self, batch, out):
        raise AssertionError("a method with sub_steps is not asked for training_loss")


def _setup(seed=0):
    torch.manual_seed(seed)
    model = MultimodalModel({"a": torch.nn.Linear(3, 4), "b": torch.nn.Linear(2, 4)}, 3, feature_dims={"a": 4, "b": 4})
    method = TwoSteps(model)
    x = {"a": torch.randn(6, 3), "b": torch.randn(6, 2)}
    return method, Batch(x, torch.tensor([0, 1, 2, 0, 1, 2]))


def test_each_sub_step_updates_its_own_parameters_with_the_head_as_the_step_before_left_it():
    method, batch = _setup()
    enc_a, enc_b, head = method.model.encoders["a"], method.model.encoders["b"], method.model.fusion.head[0]
    lr = 0.1
    # by hand: plain gradient descent, step a then step b with the head after step a
    Wa, ba, Wb, bb = (t.detach().clone() for t in (enc_a.weight, enc_a.bias, enc_b.weight, enc_b.bias))
    H, c = head.weight.detach().clone(), head.bias.detach().clone()
    params = [t.requires_grad_() for t in (Wa, ba, H, c)]
    la = F.cross_entropy((batch.inputs["a"] @ Wa.t() + ba) @ H.t() + c, batch.labels)
    gWa, gba, gH, gc = torch.autograd.grad(la, params)
    Wa1, ba1, H1, c1 = (p.detach() - lr * g for p, g in zip(params, (gWa, gba, gH, gc)))
    params = [t.requires_grad_() for t in (Wb, bb, H1.clone(), c1.clone())]
    lb = F.cross_entropy((batch.inputs["b"] @ params[0].t() + params[1]) @ params[2].t() + params[3], batch.labels)
    Wb1, bb1, H2, c2 = (p.detach() - lr * g for p, g in zip(params, torch.autograd.grad(lb, params)))

    opt = torch.optim.SGD(method.parameters(), lr=lr)
    before_heads = {k: v.clone() for k, v in method.model.heads.state_dict().items()}
    calls = []
    loss = train_step(method, batch, opt, inner_step=lambda: (calls.append("inner"), opt.step()))
    assert calls == ["inner"]  # step a through inner_step, the last (b) through optimizer.step
    for got, want in ((enc_a.weight, Wa1), (enc_a.bias, ba1), (enc_b.weight, Wb1), (enc_b.bias, bb1),
                      (head.weight, H2), (head.bias, c2)):
        torch.testing.assert_close(got.detach(), want)
    assert all(torch.equal(v, before_heads[k]) for k, v in method.model.heads.state_dict().items())
    assert set(loss.terms) == {"a/task", "b/task"}
    torch.testing.assert_close(loss.terms["a/task"], la.detach())
    torch.testing.assert_close(loss.terms["b/task"], lb.detach())
    torch.testing.assert_close(loss.total, la.detach() + lb.detach())


def test_a_non_finite_sub_step_stops_the_batch():
    method, batch = _setup()
    method.scale = float("inf")
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    b0 = method.model.encoders["b"].weight.detach().clone()
    a0 = method.model.encoders["a"].weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match="'task'"):
        train_step(method, batch, opt)
    seen = []
    train_step(method, batch, opt, on_nonfinite=seen.append)
    assert len(seen) == 1 and torch.equal(method.model.encoders["b"].weight, b0)
    assert not torch.equal(method.model.encoders["a"].weight, a0)  # step a had happened


def test_a_new_phase_with_a_fresh_optimizer_clears_its_state_and_only_then():
    method, batch = _setup()
    method.phase = lambda epoch: Phase(f"p{epoch // 2}", fresh_optimizer=epoch < 4)
    opt = torch.optim.Adam(method.parameters(), lr=0.01)
    fake = SimpleNamespace(method=method, optimizers=lambda: SimpleNamespace(optimizer=opt))
    cleared = []
    for epoch in range(6):
        train_step(method, batch, opt)
        before = len(opt.state)
        BalanceModule._begin_phase(fake, epoch + 1)
        cleared.append(before > 0 and len(opt.state) == 0)
    # epochs 2 and 4 begin phases p1 and p2; p2 (epochs 4-5) keeps its state: not fresh
    assert cleared == [False, True, False, False, False, False]
