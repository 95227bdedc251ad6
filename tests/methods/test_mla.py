"""MLA: the projector and the gradient it leaves on the head, each step's updates, the
test-time fusion, three modalities through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmbalance import MultimodalModel
from mmbalance.cli import main
from mmbalance.engine import train_step
from mmbalance.errors import ConfigError
from mmbalance.methods import get_method
from mmbalance.methods.mla import MLA, entropy_weights, projector_update
from mmbalance.types import Batch

from ..conftest import three_modality_npz


def _owm(P, r, alpha):
    """The projector step in float64 numpy, element by element from its definition."""
    P, r = np.asarray(P, np.float64), np.asarray(r, np.float64)
    k = P @ r
    denom = alpha + r @ k
    new = np.array([[P[i, j] - k[i] * k[j] / denom for j in range(len(r))] for i in range(len(r))])
    return new / np.sqrt((new ** 2).sum())


def test_projector_update_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    P = torch.eye(5) + 0.1 * torch.randn(5, 5, generator=g)
    r = torch.randn(5, generator=g)
    got = projector_update(P.double(), r.double(), 0.1)
    np.testing.assert_allclose(got.numpy(), _owm(P.numpy(), r.numpy(), 0.1), rtol=1e-10)
    # from the identity, P' r = r alpha / (alpha + |r|^2), up to the Frobenius normalisation
    Q = projector_update(torch.eye(5, dtype=torch.float64), r.double(), 0.01)
    unnormalised = r.double() * 0.01 / (0.01 + r.double() @ r.double())
    np.testing.assert_allclose((Q @ r.double()).numpy() * _fro(torch.eye(5), r, 0.01), unnormalised.numpy(),
                               rtol=1e-8, atol=1e-12)


def _fro(P, r, alpha):
    P, r = P.double(), r.double()
    k = P @ r
    return float(torch.linalg.matrix_norm(P - torch.outer(k, k) / (alpha + r @ k)))


def _method(seed=0, **hp):
    torch.manual_seed(seed)
    model = MultimodalModel({"a": nn.Linear(3, 4), "b": nn.Linear(2, 4)}, 3, feature_dims={"a": 4, "b": 4})
    method = MLA(model, get_method("mla").Hyperparameters(**hp))
    method.on_epoch_start(0, range(4))  # a loader of 4 batches
    return method


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return Batch({"a": torch.randn(6, 3, generator=g), "b": torch.randn(6, 2, generator=g)},
                 torch.tensor([0, 1, 2, 0, 1, 2]))


def test_two_batches_by_hand_losses_updates_and_the_projected_head_gradient():
    method = _method()
    assert isinstance(method.model.fusion.head[0], nn.Linear)  # given a shared linear head
    lr = 0.05
    enc = {m: [p.detach().clone() for p in method.model.encoders[m].parameters()] for m in "ab"}
    W, c = (p.detach().clone() for p in method.model.fusion.head.parameters())
    P, first = torch.eye(4, dtype=torch.float64), True
    opt = torch.optim.SGD(method.parameters(), lr=lr)
    for index in range(2):
        batch = _batch(index)
        alpha = 0.1 ** (1 + index / 4)
        losses, last_grad = {}, None
        for m in "ab":  # by hand: CE of the head on m's feature; P absorbs the mean feature; W's grad times P^T
            params = [t.clone().requires_grad_() for t in (*enc[m], W, c)]
            h = batch.inputs[m] @ params[0].t() + params[1]
            loss = F.cross_entropy(h @ params[2].t() + params[3], batch.labels)
            grads = list(torch.autograd.grad(loss, params))
            if not first:
                P = torch.from_numpy(_owm(P.numpy(), h.detach().mean(0).double().numpy(), alpha))
                grads[2] = grads[2] @ P.t().float()
            first = False
            enc[m] = [p.detach() - lr * g for p, g in zip(params[:2], grads[:2])]
            W, c = params[2].detach() - lr * grads[2], params[3].detach() - lr * grads[3]
            losses[m], last_grad = loss.detach(), grads[2]
        out = train_step(method, batch, opt)
        for m in "ab":
            torch.testing.assert_close(out.terms[f"{m}/task"], losses[m])
            for got, want in zip(method.model.encoders[m].parameters(), enc[m]):
                torch.testing.assert_close(got.detach(), want)
        torch.testing.assert_close(method.model.fusion.head[0].weight.grad, last_grad)  # left by step b
        torch.testing.assert_close(method.model.fusion.head[0].weight.detach(), W)
        torch.testing.assert_close(method.model.fusion.head[0].bias.detach(), c)
        torch.testing.assert_close(method.projector.double(), P, rtol=1e-5, atol=1e-6)
    assert int(method.updates) == 4 and int(method.batch) == 1


def test_without_projection_the_head_keeps_its_plain_gradient():
    method = _method(projection=False)
    batch = _batch(0)
    opt = torch.optim.SGD(method.parameters(), lr=0.0)
    train_step(method, batch, opt)
    train_step(method, batch, opt)
    head = method.model.fusion.head
    z = method.model.encoders["b"](batch.inputs["b"])
    want = torch.autograd.grad(F.cross_entropy(head(z), batch.labels), head[0].weight)[0]
    torch.testing.assert_close(head[0].weight.grad, want)
    assert torch.equal(method.projector, torch.eye(4))


def test_entropy_weights_per_sample_and_per_batch_by_loops():
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(5, 4, generator=g) * s for s in (0.5, 2.0, 1.0)]
    w = entropy_weights(logits, "sample")
    for i in range(5):
        H = [-sum(float(p) * np.log(float(p)) for p in z[i].softmax(-1)) for z in logits]
        e = [np.exp(max(H) - h) for h in H]
        np.testing.assert_allclose(w[:, i, 0].numpy(), np.array(e) / sum(e), rtol=1e-5)
    wb = entropy_weights(logits, "batch")  # softmax over the batch axis, summed: one number per modality
    H = [-float((z.softmax(0) * z.softmax(0).log()).sum()) for z in logits]
    e = np.exp(max(H) - np.array(H))
    np.testing.assert_allclose(wb.reshape(-1).numpy(), e / e.sum(), rtol=1e-5)


def test_predict_weighs_the_shared_head_outputs():
    method = _method()
    out = method(_batch(0).inputs)
    z = [out.unimodal_logits[m] for m in "ab"]
    w = entropy_weights(z)
    torch.testing.assert_close(method.predict(out), w[0] * z[0] + w[1] * z[1])
    method.hparams.test_fusion = "fixed"
    torch.testing.assert_close(method.predict(out), 0.55 * z[0] + 0.45 * z[1])
    with pytest.raises(ConfigError, match="method 'mla': method.test_fusion 'mean' is unknown"):
        _method(test_fusion="mean")


@pytest.mark.parametrize("name", ["mla", "reconboost"])
def test_a_regressor_is_refused_in_one_line(name):
    model = MultimodalModel({"a": nn.Linear(3, 4), "b": nn.Linear(2, 4)}, 1, feature_dims={"a": 4, "b": 4})
    with pytest.raises(ConfigError, match=f"^method '{name}' needs classification; the model is a regressor$"):
        get_method(name)(model)


@pytest.mark.parametrize("name", ["mla", "reconboost"])
def test_train_on_a_three_modality_npz(name, tmp_path):
    data = three_modality_npz(tmp_path / "three.npz")
    extra = ["method.epochs_per_stage=1", "method.correct_epoch=1"] if name == "reconboost" else []
    epochs = 3 if name == "reconboost" else 1  # reconboost: a new phase each epoch
    code = main(["train", "--data", str(data), "--method", name, "--set", f"trainer.max_epochs={epochs}",
                 "trainer.progress=false", "data.batch_size=16", "model.feature_dim=6", *extra,
                 "--out", str(tmp_path / name)])
    assert code == 0
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "accuracy/audio", "accuracy/video", "accuracy/text"}
    ckpt = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == epochs * 4  # one global step per batch (63 training rows, batch 16)
    if name == "reconboost":  # epoch 2 began stage 1 (video) with a fresh optimizer: only it and the head
        state = ckpt["optimizer_states"][0]["state"]
        assert state and all(int(s["step"]) == 4 for s in state.values())  # the head's too, not 3 x 4
