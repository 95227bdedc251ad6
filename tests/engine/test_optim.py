"""build_optimizer's implementations: foreach (the default) is the for_loop update bit for bit,
both follow a hand-written Adam/SGD, fused stays within float rounding, and a run trained
with foreach keeps exactly the weights and metrics of the same run with for_loop."""

from __future__ import annotations

import pytest
import torch

from mmbalance.config import OptimConfig
from mmbalance.engine.optim import build_optimizer
from mmbalance.errors import ConfigError
from mmbalance.training import train

from ..conftest import tiny_config


def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 7), (3,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]


def _run(cfg: OptimConfig, steps: int = 25):
    """Two groups (the second at lr_scale 0.5), gradients from a fixed stream; the last
    parameter has no gradient every third step (an unused head), as in a real model."""
    params = _params()
    opt = build_optimizer([{"params": params[:2]}, {"params": params[2:], "lr_scale": 0.5}], cfg)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (i == 3 and step % 3 == 0) else torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()
    return [p.detach().clone() for p in params], opt


def _reference(name: str, lr: float, wd: float, momentum: float, eps: float, steps: int = 25):
    """The textbook updates (PyTorch's documented algorithms), one tensor at a time."""
    params = [p.detach().clone() for p in _params()]
    lrs = [lr, lr, 0.5 * lr, 0.5 * lr]
    state = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p), buf=None, t=0) for p in params]
    b1, b2 = 0.9, 0.999
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for i, p in enumerate(params):
            if i == 3 and step % 3 == 0:
                continue
            grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            s = state[i]
            if name == "sgd":
                grad = grad + wd * p
                s["buf"] = grad.clone() if s["buf"] is None else momentum * s["buf"] + grad
                params[i] = p - lrs[i] * s["buf"]
                continue
            s["t"] += 1
            if name == "adamw":
                p = p * (1 - lrs[i] * wd)
            else:
                grad = grad + wd * p
            s["m"] = b1 * s["m"] + (1 - b1) * grad
            s["v"] = b2 * s["v"] + (1 - b2) * grad * grad
            m_hat, v_hat = s["m"] / (1 - b1 ** s["t"]), s["v"] / (1 - b2 ** s["t"])
            params[i] = p - lrs[i] * m_hat / (v_hat.sqrt() + eps)
    return params


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_foreach_is_the_for_loop_update_bit_for_bit_and_the_textbook_one(name):
    cfg = dict(name=name, lr=0.01, weight_decay=0.05, momentum=0.9, eps=1e-8)
    foreach, opt = _run(OptimConfig(**cfg))  # the default
    assert all(group["foreach"] is True for group in opt.param_groups)
    loop, _ = _run(OptimConfig(**cfg, implementation="for_loop"))
    # bit for bit is legitimate here: on the CPU torch's _foreach_* ops loop over the same
    # per-tensor kernels the for_loop update calls, on the same tensors (fused is another
    # kernel: a tolerance below)
    for a, b in zip(foreach, loop):
        assert torch.equal(a, b)
    for a, b in zip(foreach, _reference(name, 0.01, 0.05, 0.9, 1e-8)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert not torch.equal(foreach[0], _params()[0])  # it moved


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_stays_within_rounding_of_the_others(name):
    cfg = dict(name=name, lr=0.01, weight_decay=0.05)
    fused, opt = _run(OptimConfig(**cfg, implementation="fused"))
    assert all(group["fused"] is True for group in opt.param_groups)
    for a, b in zip(fused, _reference(name, 0.01, 0.05, 0.9, 1e-8)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_unknown_implementation_and_fused_sgd_are_refused_by_name():
    with pytest.raises(ConfigError, match="optim.implementation 'fast' is unknown"):
        tiny_config("joint", optim__implementation="fast")
    # torch's fused SGD fails when a parameter has no gradient in its first steps
    with pytest.raises(ConfigError, match="optim.implementation=fused needs optim.name adam or adamw"):
        build_optimizer([{"params": _params()}], OptimConfig(name="sgd", implementation="fused"))
    with pytest.raises(ConfigError, match="optim.implementation=fused needs optim.name adam or adamw"):
        tiny_config("joint", optim__name="sgd", optim__implementation="fused")  # refused before any data


def test_a_run_keeps_the_same_weights_and_metrics_with_foreach_as_with_for_loop(tmp_path):
    # ogm_ge rescales the encoders' gradients between backward and step; mcr adds groups.
    # Exact: both runs train in this process with the same shapes and threads, and on the
    # CPU the foreach update is the for_loop one's per-tensor kernels (see above)
    runs = {}
    for impl in ("foreach", "for_loop"):
        for method in ("ogm_ge", "mcr"):
            extra = {"method__init": "scratch"} if method == "mcr" else {}
            cfg = tiny_config(method, optim__implementation=impl, **extra)
            metrics = train(cfg, tmp_path / f"{method}_{impl}")
            ckpt = torch.load(tmp_path / f"{method}_{impl}" / "checkpoints" / "last.ckpt",
                              map_location="cpu", weights_only=False)
            moments = [s for s in ckpt["optimizer_states"][0]["state"].values()]
            runs[method, impl] = (metrics, ckpt["state_dict"], moments)
    for method in ("ogm_ge", "mcr"):
        (m1, w1, s1), (m2, w2, s2) = runs[method, "foreach"], runs[method, "for_loop"]
        assert m1["val"] == m2["val"] and m1["test"] == m2["test"]
        _assert_same(w1, w2)  # the weights and Adam's moments: the work a resume continues from
        _assert_same(s1, s2)
        assert len(s1) > 4


def _assert_same(a, b):
    if torch.is_tensor(a):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b
