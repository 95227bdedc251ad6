"""``trainer.log_term_grad_norms``: per-term gradient norms reaching each encoder,
and the shares ``diagnose`` reports."""

from __future__ import annotations

import pytest
import torch

from mmbalance import MLPEncoder, MultimodalModel
from mmbalance.analysis.diagnose import gradient_shares
from mmbalance.engine.step import term_grad_norms, train_step
from mmbalance.methods import get_method
from mmbalance.types import Batch


def _setup(name, **hp):
    torch.manual_seed(0)
    model = MultimodalModel({"a": MLPEncoder(5, 4, 6, 1), "v": MLPEncoder(7, 4, 6, 1)}, 3)
    cls = get_method(name)
    method = cls(model, cls.Hyperparameters(**hp))
    batch = Batch({"a": torch.randn(8, 5), "v": torch.randn(8, 7)}, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    return method, batch


def _encoder_grad_norm(method, m):
    return float(torch.cat([p.grad.reshape(-1) for p in method.model.modality_parameters(m)]).norm())


def test_single_term_norm_equals_the_backward_gradient():
    method, batch = _setup("joint")
    loss = method.training_loss(batch, method(batch.inputs))
    norms = term_grad_norms(method, loss)
    loss.total.backward()
    for m in ("a", "v"):
        assert norms[f"grad/task/{m}"] == pytest.approx(_encoder_grad_norm(method, m), rel=1e-5)


def test_terms_reach_only_the_encoders_they_depend_on_and_sum_to_the_total():
    method, batch = _setup("mcr", num_permutations=4, unimodal_weight=0.5)
    loss = method.training_loss(batch, method(batch.inputs))
    norms = term_grad_norms(method, loss)
    assert norms["grad/unimodal/a/v"] == 0.0 and norms["grad/unimodal/v/a"] == 0.0
    assert norms["grad/unimodal/a/a"] > 0 and norms["grad/mipd/a"] > 0 and norms["grad/contrastive/v"] > 0
    # the per-term gradient vectors add up to the total's gradient (triangle inequality on norms)
    loss.total.backward()
    for m in ("a", "v"):
        total = _encoder_grad_norm(method, m)
        assert total <= sum(v for k, v in norms.items() if k.startswith("grad/") and k.endswith(f"/{m}")) + 1e-6


def test_shares_are_each_terms_norm_over_the_encoders_sum():
    method, batch = _setup("mcr", num_permutations=4, unimodal_weight=0.5)
    norms = term_grad_norms(method, method.training_loss(batch, method(batch.inputs)))
    for m in ("a", "v"):
        mine = {k[len("grad/"):-len(m) - 1]: v for k, v in norms.items() if k.startswith("grad/") and k.endswith("/" + m)}
        shares = {k[len("grad_share/"):-len(m) - 1]: v for k, v in norms.items()
                  if k.startswith("grad_share/") and k.endswith("/" + m)}
        assert shares.keys() == mine.keys() and sum(shares.values()) == pytest.approx(1.0)
        for term, norm in mine.items():
            assert shares[term] == pytest.approx(norm / sum(mine.values()))


def test_train_step_logs_them_only_when_asked():
    method, batch = _setup("multiloss")
    opt = torch.optim.SGD(method.parameters(), lr=0.0)
    assert not any(k.startswith("grad/") for k in train_step(method, batch, opt).logs)
    logs = train_step(method, batch, opt, grad_norms=True).logs
    assert {k for k in logs if k.startswith("grad/")} == {"grad/task/a", "grad/task/v", "grad/unimodal/a/a",
                                                           "grad/unimodal/a/v", "grad/unimodal/v/a",
                                                           "grad/unimodal/v/v"}


def test_shares_from_the_logs_by_hand(tmp_path):
    log = tmp_path / "logs" / "version_0"
    log.mkdir(parents=True)
    (log / "metrics.csv").write_text(
        "epoch,train/grad/task/a,train/grad/mipd/a,train/grad/unimodal/a/a,val/accuracy\n"
        "0,3.0,1.0,,\n"          # a row without one term (another log line)
        ",,,,0.5\n"
        "1,1.0,1.0,4.0,\n")
    shares = gradient_shares(tmp_path)
    # means: task 2, mipd 1, unimodal/a 4 -> total 7
    assert shares == {"a": pytest.approx({"unimodal/a": 4 / 7, "task": 2 / 7, "mipd": 1 / 7})}
    assert gradient_shares(tmp_path / "nothing") == {}
