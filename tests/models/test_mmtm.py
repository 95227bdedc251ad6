"""MMTM (the Greedy code's form): the forward against loops over samples and channels, the
running averages against the mean of the recorded batch means, the frozen (curation) path,
and the official average bug as an option."""

from __future__ import annotations

import math

import pytest
import torch

from mmbalance.models.mmtm import MMTM, MMTMFusion


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors run fastest on one thread."""


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _by_hand(mmtm: MMTM, maps):
    """Loops: per sample, each channel's mean over all its positions, the squeeze layer and
    ReLU, each modality's excitation layer and sigmoid, then every position times its channel's
    scale. Returns (outputs as nested lists, excitations as lists)."""
    W, b = mmtm.squeeze.weight.tolist(), mmtm.squeeze.bias.tolist()
    outs = [x.clone() for x in maps]
    scales = [[], []]
    for i in range(maps[0].shape[0]):
        gap = []
        for x in maps:
            for c in range(x.shape[1]):
                values = x[i, c].reshape(-1).tolist()
                gap.append(sum(values) / len(values))
        hidden = [max(0.0, sum(W[j][k] * gap[k] for k in range(len(gap))) + b[j]) for j in range(len(W))]
        for m, x in enumerate(maps):
            We, be = mmtm.excite[m].weight.tolist(), mmtm.excite[m].bias.tolist()
            e = [_sigmoid(sum(We[c][j] * hidden[j] for j in range(len(hidden))) + be[c]) for c in range(x.shape[1])]
            scales[m].append(e)
            for c in range(x.shape[1]):
                outs[m][i, c] = x[i, c] * e[c]
    return outs, scales


def _maps(seed=0, batch=3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 2, 3, 4, generator=gen), torch.randn(batch, 3, 2, 2, 5, generator=gen)]


def test_forward_matches_a_hand_computation_and_the_squeeze_width_is_the_officials():
    torch.manual_seed(0)
    mmtm = MMTM((2, 3), ratio=4).eval()
    assert mmtm.squeeze.weight.shape == (int(2 * 5 / 4), 5)  # balanced_mmtm.py:25-26
    maps = _maps()
    got = mmtm(maps)
    want, scales = _by_hand(mmtm, maps)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    for e, s in zip(mmtm.excitations(maps), scales):
        torch.testing.assert_close(e, torch.tensor(s), rtol=1e-5, atol=1e-6)
    assert int(mmtm.steps) == 0 and float(mmtm.average_0.abs().sum()) == 0  # eval: no update


def test_running_averages_are_the_mean_of_every_training_batch_mean():
    torch.manual_seed(1)
    mmtm = MMTM((2, 3)).train()
    seen = [[], []]
    for seed in range(4):
        maps = _maps(seed, batch=2 + seed)
        _, scales = _by_hand(mmtm, maps)
        for m in range(2):
            seen[m].append(torch.tensor(scales[m]).mean(0))
        mmtm(maps)
    assert int(mmtm.steps) == 4
    for m, avg in enumerate((mmtm.average_0, mmtm.average_1)):
        torch.testing.assert_close(avg, torch.stack(seen[m]).mean(0), rtol=1e-5, atol=1e-6)
    mmtm.eval()
    mmtm(_maps(9))
    assert int(mmtm.steps) == 4  # evaluation forwards do not enter the averages


def test_frozen_modality_gets_its_running_average_including_this_batch_and_no_gradient():
    torch.manual_seed(2)
    mmtm = MMTM((2, 3)).train()
    mmtm(_maps(5))
    first = mmtm.average_1.clone()
    maps = _maps(6)
    _, scales = _by_hand(mmtm, maps)
    out = mmtm(maps, frozen=1)
    avg1 = (first + torch.tensor(scales[1]).mean(0)) / 2  # the update comes first
    torch.testing.assert_close(mmtm.average_1, avg1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], maps[1] * avg1.reshape(1, 3, 1, 1, 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0], maps[0] * torch.tensor(scales[0]).reshape(3, 2, 1, 1), rtol=1e-5, atol=1e-6)
    (out[0].sum() + out[1].sum()).backward()
    assert all(p.grad is None for p in mmtm.excite[1].parameters())  # cut: the average is a constant
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mmtm.excite[0].parameters())


def test_the_official_average_bug_is_an_option():
    torch.manual_seed(3)
    fixed, buggy = MMTM((3, 3)), MMTM((3, 3), average_bug=True)
    buggy.load_state_dict(fixed.state_dict())
    maps = [torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)]
    fixed(maps), buggy(maps)
    torch.testing.assert_close(buggy.average_1, fixed.average_0)  # balanced_mmtm.py:114
    assert not torch.allclose(fixed.average_1, fixed.average_0)
    with pytest.raises(ValueError, match="equal channels"):
        MMTM((2, 3), average_bug=True)


def test_fusion_acts_only_after_its_stages_and_groups_parameters_by_modality():
    fusion = MMTMFusion(["a", "v"], {"layer2": (2, 3)})
    maps = dict(zip(["a", "v"], _maps()))
    passed = fusion("layer1", maps)
    assert all(passed[m] is maps[m] for m in maps)
    out = fusion("layer2", maps)
    want = fusion.mmtm["layer2"](list(maps.values()))
    torch.testing.assert_close(out["v"], want[1])
    mmtm = fusion.mmtm["layer2"]
    assert {id(p) for p in fusion.modality_parameters(1)} == {id(p) for p in mmtm.excite[1].parameters()}
    assert {id(p) for p in fusion.shared_parameters()} == {id(p) for p in mmtm.squeeze.parameters()}
