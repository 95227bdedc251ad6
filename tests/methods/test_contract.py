"""One contract test over the whole method registry (DomainBed-style)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from mmbalance.methods import REGISTRY
from mmbalance.training import BalanceModule, build_data, build_method, build_model, loaders

from ..conftest import tiny_config

# Every method that trains through the loop; the ensemble only combines trained stages
# (tests/methods/test_pipelines.py covers it and the stage mechanics).
STEP_METHODS = [name for name, cls in REGISTRY.items() if getattr(cls, "trains_final", True)]


def _module(name: str, seed: int = 0):
    explicit = {"method__modality": "x1"} if name == "unimodal" else {}  # it has no default modality
    cfg = tiny_config(name, seed=seed, **explicit)
    L.seed_everything(seed, verbose=False)
    data = build_data(cfg)
    return BalanceModule(build_method(cfg, build_model(data, cfg)), cfg), data, cfg


@pytest.mark.parametrize("name", STEP_METHODS)
def test_method_contract(name, tmp_path):
    module, data, cfg = _module(name)
    before = {k: v.detach().clone() for k, v in module.method.named_parameters()}
    in_optimizer = {id(p) for g in module.method.param_groups() for p in g["params"]}
    _, (train_dl, val_dl, _) = loaders(data, cfg, 0)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=3, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, callbacks=[Record()],
                        enable_model_summary=False, default_root_dir=tmp_path, val_check_interval=3)
    trainer.fit(module, train_dl, val_dl)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))

    for pname, p in module.method.named_parameters():
        changed = not torch.equal(before[pname], p.detach())
        if id(p) not in in_optimizer:
            assert not changed, f"{name}: {pname} is not optimized but changed"
        elif p.grad is not None and p.grad.abs().sum() > 0:
            assert changed, f"{name}: {pname} had a gradient but did not change"
    assert any(not torch.equal(before[n], p) for n, p in module.method.named_parameters())

    twin, _, _ = _module(name)  # same seed, same steps: bit-identical on CPU
    _, (twin_dl, twin_val, _) = loaders(data, cfg, 0)
    L.Trainer(max_steps=3, limit_val_batches=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
              val_check_interval=3).fit(twin, twin_dl, twin_val)
    for key, value in module.method.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, twin.method.state_dict()[key]), f"{name}: {key} not deterministic"

    path = tmp_path / "state.ckpt"
    trainer.save_checkpoint(path)
    fresh, _, _ = _module(name, seed=1)
    fresh.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    got, want = fresh.method.state_dict(), module.method.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], torch.Tensor):
            assert torch.equal(got[key], want[key]), f"{name}: {key} lost in checkpoint"
        else:
            assert got[key] == want[key], f"{name}: {key} lost in checkpoint"
