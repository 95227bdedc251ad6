"""Device-dependent behaviour that a CPU-only machine cannot see (the mutants of
docs/testing.md that are equivalent on a CPU). Skipped without CUDA; run on a GPU with
``bash studies/gpu_check.sh`` (it runs this file first) or ``pytest tests/gpu``."""

from __future__ import annotations

import pytest
import torch

from mmbalance.engine.rundir import method_state
from mmbalance.losses.permutations import sample_permutations

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda", 0)


def test_ogm_noise_is_drawn_on_the_gradients_device_from_a_generator_there():
    """OGM._noise with ``device=None`` (mutants 3, 13, 17) would draw on the CPU."""
    from mmbalance.methods.ogm import OGM
    noise = OGM._noise
    holder = type("H", (), {"noise_seed": 7, "noise_steps": torch.tensor(3)})()
    grad = torch.randn(64, 8, device=CUDA)
    generators = {}
    a = noise(holder, grad, generators)
    assert a.device == grad.device and generators[grad.device].device.type == "cuda"
    again = noise(holder, grad, {})  # the same (seed, step): the same draw, on every rank
    assert torch.equal(a, again)  # same kernel, same device, same generator state: exact
    std = float(grad.std())
    assert 0.5 * std < float(a.std()) < 1.5 * std


@pytest.mark.parametrize("kind", ["all", "derangement", "different_label"])
def test_permutations_are_drawn_on_the_device_they_are_asked_for(kind):
    labels = torch.arange(32, device=CUDA) % 4
    g = torch.Generator(device=CUDA).manual_seed(0)
    perms, valid = sample_permutations(32, 16, kind, labels=labels, device=CUDA, generator=g)
    assert perms.device.type == "cuda" and valid.device.type == "cuda"
    assert torch.equal(perms.sort(dim=1).values.cpu(), torch.arange(32).expand(16, 32))
    if kind == "derangement":
        assert not (perms == torch.arange(32, device=CUDA)).any()


def test_a_checkpoint_saved_on_the_gpu_loads_onto_the_cpu(tmp_path):
    """``method_state`` maps storages to the CPU (mutants 3, 6: without map_location the
    tensors would come back on the GPU)."""
    path = tmp_path / "gpu.ckpt"
    torch.save({"state_dict": {"method.w": torch.ones(3, device=CUDA)}}, path)
    state = method_state(path)
    assert state["w"].device.type == "cpu" and torch.equal(state["w"], torch.ones(3))


def test_one_training_step_on_the_gpu_for_each_gradient_method(tmp_path):
    """OGM-GE (noise), MCR (derangements on the device) and AGM train a tiny run on CUDA."""
    from mmbalance.training import train
    from ..conftest import tiny_config
    for name, extra in (("ogm_ge", {}), ("mcr", {"method__permutation": "derangement", "method__num_permutations": 4}),
                        ("agm", {})):
        metrics = train(tiny_config(name, trainer__max_epochs=1, trainer__accelerator="gpu", **extra), tmp_path / name)
        assert metrics["nonfinite_steps"] == 0 and 0.0 <= metrics["test"]["accuracy"] <= 1.0
