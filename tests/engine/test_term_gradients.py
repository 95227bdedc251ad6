"""``Method.combine_gradients``: a method builds some parameters' gradients from separate
per-term gradients; the step writes them, and the total's gradient everywhere else, through
one call of the loop's backward (precision scaling, DDP)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mmbalance import MLPEncoder, MultimodalModel
from mmbalance.engine.step import term_gradient, train_step
from mmbalance.methods import get_method
from mmbalance.methods.base import Method
from mmbalance.types import Batch, LossTerms

LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


class Mixed(Method):
    """Encoder a gets 3 g_task - 2 g_uni/a; everything else the total's gradient."""

    name = "_mixed_for_test"

    def training_loss(self, batch, out):
        terms = {"task": self.task_loss(out.logits, batch.labels)}
        terms.update({f"unimodal/{m}": l for m, l in self.unimodal_losses(out, batch.labels).items()})
        return LossTerms.from_terms(terms)

    def combine_gradients(self, loss, gradient):
        params = list(self.model.modality_parameters("a"))
        g_task = gradient(loss.terms["task"], params)
        g_uni = gradient(loss.terms["unimodal/a"], params)
        return {p: 3 * a - 2 * b for p, a, b in zip(params, g_task, g_uni)}


def _setup(seed=0):
    torch.manual_seed(seed)
    model = MultimodalModel({"a": MLPEncoder(5, 4, 6, 1), "v": MLPEncoder(7, 4, 6, 1)}, 3)
    batch = Batch({"a": torch.randn(8, 5), "v": torch.randn(8, 7)}, LABELS)
    return model, batch


def _reference(model, batch):
    """Per-term gradients by autograd.grad on a fresh forward (independent of the step)."""
    method = Mixed(model)
    loss = method.training_loss(batch, method(batch.inputs))
    params = list(method.parameters())
    grad = lambda t: torch.autograd.grad(t, params, retain_graph=True, allow_unused=True)  # noqa: E731
    task, uni, total = grad(loss.terms["task"]), grad(loss.terms["unimodal/a"]), grad(loss.total)
    enc = {id(p) for p in model.modality_parameters("a")}
    return {n: (3 * task[i] - 2 * uni[i]) if id(p) in enc else total[i]
            for i, (n, p) in enumerate(method.named_parameters())}


class _Frozen(torch.optim.SGD):
    def step(self, closure=None):  # keep the weights, to compare .grad with the reference
        return None


def test_combined_and_total_gradients_written_once():
    model, batch = _setup()
    expected = _reference(model, batch)
    method = Mixed(model)
    calls = []
    train_step(method, batch, _Frozen(method.parameters(), lr=0.1),
               backward=lambda t: (calls.append(1), (4.0 * t).backward()))  # a loss scaler x4
    assert calls == [1]
    for name, p in method.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, 4.0 * expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_none_is_the_ordinary_backward():
    model, batch = _setup()
    method = get_method("multiloss")(model)
    train_step(method, batch, _Frozen(method.parameters(), lr=0.1))
    got = {n: p.grad.clone() for n, p in method.named_parameters()}
    method.zero_grad()
    method.training_loss(batch, method(batch.inputs)).total.backward()
    for name, p in method.named_parameters():
        assert torch.equal(got[name], p.grad), name


def test_parameter_the_total_misses_keeps_no_gradient():
    model, batch = _setup()
    extra = torch.nn.Parameter(torch.ones(3))
    method = Mixed(model)
    method.unused = extra
    train_step(method, batch, _Frozen(method.parameters(), lr=0.1))
    assert extra.grad is None


def test_term_gradient_zeros_where_a_term_does_not_reach():
    model, batch = _setup()
    method = Mixed(model)
    loss = method.training_loss(batch, method(batch.inputs))
    v = list(model.modality_parameters("v"))
    assert all(torch.equal(g, torch.zeros_like(p)) for g, p in zip(term_gradient(loss.terms["unimodal/a"], v), v))
    assert all(torch.equal(g, torch.zeros_like(p)) for g, p in zip(term_gradient(torch.tensor(1.0), v), v))
    assert term_gradient(loss.terms["task"], []) == []


def _rank(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, batch = _setup()
    half = Batch({m: x[rank * 4:(rank + 1) * 4] for m, x in batch.inputs.items()}, batch.labels[rank * 4:(rank + 1) * 4])
    method = Mixed(model)
    loss = method.training_loss(half, method(half.inputs))
    params = list(model.modality_parameters("a"))
    torch.save([g.clone() for g in term_gradient(loss.terms["task"], params)], f"{path}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_term_gradients_are_the_global_batch_mean_under_ddp(tmp_path):
    """Two gloo ranks with 4 rows each: both get the gradient of the 8-row batch's mean loss."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    model, batch = _setup()
    method = Mixed(model)
    loss = method.training_loss(batch, method(batch.inputs))
    params = list(model.modality_parameters("a"))
    whole = torch.autograd.grad(loss.terms["task"], params)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for r0, r1, w in zip(*ranks, whole):
        assert torch.equal(r0, r1)
        torch.testing.assert_close(r0, w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["mmpareto"])
def test_registered_users_of_the_hook_train(name):
    model, batch = _setup()
    method = get_method(name)(model)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    first = float(train_step(method, batch, opt).total.detach())
    for _ in range(20):
        last = float(train_step(method, batch, opt).total.detach())
    assert last < first
