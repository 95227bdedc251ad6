"""OGM-GE: the noise std is the unscaled gradient's, it reaches every modality, and it is
reproducible from (seed, step) so that DDP replicas add the same noise."""

from __future__ import annotations

import copy

import pytest
import torch

from mmbalance.methods.ogm import OGMGE
from mmbalance.models import MLPEncoder, MultimodalModel


def _method():
    torch.manual_seed(0)
    encoders = {"a": MLPEncoder(64, 64, hidden=64, layers=1), "v": MLPEncoder(64, 64, hidden=64, layers=1)}
    return OGMGE(MultimodalModel(encoders, 3))


def _set_grads(method, seed=1):
    gen = torch.Generator().manual_seed(seed)
    grads = {}
    for name, p in method.named_parameters():
        p.grad = 3.0 * torch.randn(p.shape, generator=gen)
        grads[name] = p.grad.clone()
    return grads


def test_noise_std_is_taken_before_scaling():
    method = _method()
    method.coefficients.copy_(torch.tensor([0.1, 1.0]))
    before = _set_grads(method)
    method.after_backward()
    for name, p in method.named_parameters():
        if not (name.startswith("model.encoders.a.") and p.dim() >= 2):
            continue
        residual = p.grad - 0.1 * before[name]
        # 64 x 64 draws: the sample std of N(0, sigma) is within a few percent of sigma.
        sigma = float(before[name].std()) + 1e-8
        assert float(residual.std()) / sigma == pytest.approx(1.0, abs=0.06)
        assert abs(float(residual.mean())) < 0.1 * sigma


def test_noise_reaches_every_modality_but_not_biases():
    method = _method()
    method.coefficients.copy_(torch.tensor([0.1, 1.0]))
    before = _set_grads(method)
    method.after_backward()
    for name, p in method.named_parameters():
        changed = not torch.equal(p.grad, before[name])
        assert changed == (name.startswith("model.encoders.") and p.dim() >= 2), name


def test_noise_is_reproducible_from_seed_and_step():
    first = _method()
    second = copy.deepcopy(first)
    for method in (first, second):
        method.coefficients.copy_(torch.tensor([0.5, 1.0]))
        before = _set_grads(method)
        method.after_backward()
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(first.parameters(), second.parameters()))
    weight = dict(first.named_parameters())["model.encoders.v.net.0.weight"]  # k_v = 1: grad - g = noise
    noise_1 = weight.grad - before["model.encoders.v.net.0.weight"]
    before = _set_grads(first)
    first.after_backward()
    noise_2 = weight.grad - before["model.encoders.v.net.0.weight"]
    assert not torch.allclose(noise_1, noise_2)  # a new step draws new noise
    assert int(first.noise_steps) == 2 and first.get_extra_state()["noise_seed"] == second.noise_seed
