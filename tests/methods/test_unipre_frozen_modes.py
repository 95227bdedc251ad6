"""``unipre_frozen`` keeps its frozen encoders in eval mode for the whole fit: at every training
batch of a real run (``training.train``: the unimodal stages, then Lightning's fit with its
sanity check and per-epoch validation toggling train()/eval()), every encoder submodule has
``training == False`` (dropout off) and the encoders' BatchNorm running statistics equal the
stages' values they were loaded with, while the fusion and heads do train. The encoders here
are the tiny config's MLPs with dropout 0.5 and a BatchNorm1d appended. (Before the forward
override the first test failed: Lightning starts the fit without ``train()``.) The second test
replays Lightning's direct flag restore on one forward, against joint training's encoders."""

from __future__ import annotations

import importlib

import lightning as L
import torch
from torch import nn

from ..conftest import tiny_config

run_module = importlib.import_module("mmbalance.training.run")


class Modes(L.Callback):
    """Records, for each training batch, the mode every encoder and fusion/head submodule runs
    its forward in (forward pre-hooks, active only inside training batches), and the encoders'
    buffers when the fit starts and after each batch."""

    def __init__(self) -> None:
        self.batches, self.start, self.active, self.current = [], None, False, None

    @staticmethod
    def _buffers(method):
        return {k: v.detach().clone() for k, v in method.model.encoders.named_buffers()}

    def _hook(self, part):
        def hook(module, args):
            if self.active:
                self.current[part].append(module.training)
        return hook

    def on_train_start(self, trainer, pl_module) -> None:
        model = pl_module.method.model
        self.start = self._buffers(pl_module.method)
        for part, modules in (("encoders", model.encoders.modules()),
                              ("fusion", [*model.fusion.modules(), *model.heads.modules()])):
            for m in modules:
                m.register_forward_pre_hook(self._hook(part))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.active, self.current = True, {"encoders": [], "fusion": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.active = False
        self.batches.append({**self.current, "buffers": self._buffers(pl_module.method)})


def _with_batchnorm(real):
    def build_model(data, cfg):
        model = real(data, cfg)
        for encoder in model.encoders.values():
            encoder.net.append(nn.BatchNorm1d(encoder.out_dim))
        return model
    return build_model


def test_frozen_encoders_stay_in_eval_mode_through_the_fit(monkeypatch, tmp_path):
    monkeypatch.setattr(run_module, "build_model", _with_batchnorm(run_module.build_model))
    modes = Modes()
    cfg = tiny_config("unipre_frozen", model__dropout=0.5, data__n=160, trainer__max_epochs=2)
    metrics = run_module.train(cfg, tmp_path / "frozen", callbacks=[modes])
    assert metrics["epochs_run"] == 2 and len(modes.batches) >= 2 * 4
    stats = [k for k in modes.start if "running_mean" in k]
    assert len(stats) == 2  # one BatchNorm per encoder, trained by its stage
    assert all(float(modes.start[k].abs().sum()) > 0 for k in stats)  # the stage moved them off 0
    for seen in modes.batches:
        assert seen["encoders"] and not any(seen["encoders"]), "an encoder ran in training mode during fit"
        assert seen["fusion"] and all(seen["fusion"])  # the trained part does train
        for key, value in modes.start.items():
            assert torch.equal(seen["buffers"][key], value), key


def test_a_directly_restored_training_flag_is_undone_on_the_next_forward():
    """What Lightning does around validation (each submodule's ``training`` set back directly,
    not through ``train()``): the next forward runs the encoders in eval mode again, and a
    frozen encoder's BatchNorm keeps its statistics; plain joint training's encoders train."""
    from mmbalance.methods.joint import Joint
    from mmbalance.methods.unipre import UniPreFrozen
    from mmbalance.models import MLPEncoder, MultimodalModel

    def model():
        torch.manual_seed(0)
        encoders = {m: MLPEncoder(5, 4, hidden=6, layers=1) for m in ("a", "b")}
        for e in encoders.values():
            e.net.append(nn.BatchNorm1d(4))
        return MultimodalModel(encoders, 3, fusion="concat_linear")

    inputs = {m: torch.randn(8, 5) for m in ("a", "b")}
    for cls, frozen in ((UniPreFrozen, True), (Joint, False)):
        method = cls(model())
        method.train()
        for module in method.model.encoders.modules():
            module.training = True  # as Lightning's _ModuleMode.restore sets it
        before = method.model.encoders["a"].net[-1].running_mean.clone()
        method(inputs)
        running = [m.training for m in method.model.encoders.modules()]
        moved = not torch.equal(method.model.encoders["a"].net[-1].running_mean, before)
        assert (not any(running), not moved) == (frozen, frozen), cls.name
        assert method.model.fusion.training  # the fusion trains in both
