"""The end-of-epoch pass over a split (``Method.on_epoch_pass``, :mod:`mmbalance.training.passes`):
whole-split per-head losses against a per-row computation, eval mode and no_grad with the
train/eval flags and RNG streams left as they were, only ``train`` and ``val`` reachable, the
loop's call order (after validation, before ``on_epoch_end``, with the fit's own splits), and
two-process DDP (each rank its shard, sums reduced, rows gathered)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmbalance.data.arrays import collate
from mmbalance.errors import ConfigError
from mmbalance.methods import REGISTRY
from mmbalance.methods.joint import Joint
from mmbalance.training import BalanceModule, build_data, build_method, build_model, loaders
from mmbalance.training.passes import EpochPasses

from ..conftest import tiny_config


def _setup(name="joint", **overrides):
    cfg = tiny_config(name, **overrides)
    L.seed_everything(0, verbose=False)
    data = build_data(cfg)
    method = build_method(cfg, build_model(data, cfg))
    return method, data, cfg


def _per_row_losses(method, split):
    """Mean CE of each head over every row, one row at a time, in eval mode."""
    method.eval()
    totals, n = {}, 0
    with torch.no_grad():
        for inputs, labels in DataLoader(split, batch_size=1, collate_fn=collate):
            out = method.model(inputs)
            for key, logits in {"fused": out.logits, **out.unimodal_logits}.items():
                totals[key] = totals.get(key, 0.0) + float(F.cross_entropy(logits, labels.long()))
            n += 1
    method.train()
    return {k: v / n for k, v in totals.items()}, n


def test_losses_are_whole_split_means_per_head(tmp_path):
    method, data, cfg = _setup()
    method.train()
    passes = EpochPasses(method, {"train": data.train, "val": data.val}, batch_size=7, collate_fn=collate)
    rng = torch.get_rng_state()
    got = passes.losses("val")
    assert torch.equal(torch.get_rng_state(), rng), "a pass must not draw from the global RNG"
    assert method.training, "the train/eval flag is restored"
    want, n = _per_row_losses(method, data.val)
    assert got.count == n == len(data.val)
    assert float(got.fused) == pytest.approx(want["fused"], rel=1e-5)
    for m in method.model.modalities:
        assert float(got.unimodal[m]) == pytest.approx(want[m], rel=1e-5)
    assert passes.losses("val") is got  # cached within one hook
    assert passes.losses("train").count == len(data.train)


def test_collect_gathers_every_row_and_passes_have_no_gradient():
    method, data, _ = _setup()
    passes = EpochPasses(method, {"train": data.train, "val": data.val}, batch_size=16, collate_fn=collate)

    def features(out, labels):
        assert not torch.is_grad_enabled() and not method.training
        return {"x1": out.features["x1"], "labels": labels}

    rows = passes.collect("train", features)
    assert rows["x1"].shape[0] == rows["labels"].shape[0] == len(data.train)
    assert not rows["x1"].requires_grad


def test_only_train_and_val_are_reachable():
    method, data, _ = _setup()
    with pytest.raises(ValueError, match="reach only"):
        EpochPasses(method, {"train": data.train, "test": data.test}, batch_size=4)
    passes = EpochPasses(method, {"train": data.train, "val": None}, batch_size=4)
    with pytest.raises(ConfigError, match="'val' split"):
        passes.losses("val")


class Recorder(Joint):
    """Records what the loop hands its epoch-end pass, and the hooks' order."""

    name = "records_epoch_pass"

    def __init__(self, model, hparams=None):
        super().__init__(model, hparams)
        self.calls = []

    def on_epoch_pass(self, epoch, passes):
        self.calls.append(("pass", epoch, dict(passes.datasets), float(passes.losses("val").fused)))
        return {"probe": 1.0}

    def on_epoch_end(self, epoch):
        self.calls.append(("end", epoch))
        return {}

    def on_validation_end(self, metrics):
        self.calls.append(("val",))
        return {}


def test_the_loop_calls_the_pass_after_validation_and_before_epoch_end(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, Recorder.name, Recorder)
    method, data, cfg = _setup(Recorder.name)
    module = BalanceModule(method, cfg)
    _, (train_dl, val_dl, _) = loaders(data, cfg, 0)
    trainer = L.Trainer(max_epochs=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dl, val_dl)
    kinds = [c[0] for c in method.calls]
    assert kinds == ["val", "pass", "end", "val", "pass", "end"]
    for call in method.calls:
        if call[0] == "pass":
            assert call[2]["train"] is data.train and call[2]["val"] is data.val
            assert data.test not in call[2].values()
    want, _ = _per_row_losses(method, data.val)  # the last pass saw the final weights
    assert method.calls[-2][3] == pytest.approx(want["fused"], rel=1e-5)


_DDP_WORKER = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    from torch.utils.data import TensorDataset

    class Method(torch.nn.Module):  # task_loss, predict and unimodal heads, as Method has them
        name = "toy"
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = torch.nn.Module()
            self.model.modalities = ["a", "b"]
            self.fa, self.fb = torch.nn.Linear(3, 4), torch.nn.Linear(2, 4)
        def forward(self, inputs):
            from types import SimpleNamespace
            za, zb = self.fa(inputs["a"]), self.fb(inputs["b"])
            return SimpleNamespace(logits=za + zb, unimodal_logits={"a": za, "b": zb}, features={"a": inputs["a"]})
        def predict(self, out):
            return out.logits
        def task_loss(self, logits, labels):
            return torch.nn.functional.cross_entropy(logits, labels)

    def collate(items):
        xa = torch.stack([i[0] for i in items]); xb = torch.stack([i[1] for i in items])
        return {"a": xa, "b": xb}, torch.stack([i[2] for i in items])

    def run(rank, path, out):
        dist.init_process_group("gloo", init_method="file://" + path, rank=rank, world_size=2)
        from mmbalance.training.passes import EpochPasses
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(11, 3, generator=g), torch.randn(11, 2, generator=g),
                             torch.randint(0, 4, (11,), generator=g))
        passes = EpochPasses(Method(), {"val": data}, batch_size=2, collate_fn=collate)
        losses = passes.losses("val")
        rows = passes.collect("val", lambda o, y: {"a": o.features["a"], "y": y})
        torch.save({"fused": losses.fused, "a": losses.unimodal["a"], "count": losses.count,
                    "rows": rows["a"], "y": rows["y"], "local": len(passes.loader("val").sampler)},
                   os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2)
""")


def test_two_rank_passes_reduce_sums_and_gather_rows(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "init"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["local"], r1["local"]) == (6, 5)  # rows 0,2,..,10 and 1,3,..,9: each shard its own
    assert r0["count"] == r1["count"] == 11
    assert torch.equal(r0["fused"], r1["fused"]) and torch.equal(r0["a"], r1["a"])
    # one process over all 11 rows gives the same means
    sys.path.insert(0, str(tmp_path))
    try:
        import worker  # noqa: F401  (the toy method and data)
        g = torch.Generator().manual_seed(1)
        xa, xb = torch.randn(11, 3, generator=g), torch.randn(11, 2, generator=g)
        y = torch.randint(0, 4, (11,), generator=g)
        toy = worker.Method()
        with torch.no_grad():
            out = toy({"a": xa, "b": xb})
            assert float(r0["fused"]) == pytest.approx(float(F.cross_entropy(out.logits, y)), rel=1e-6)
            assert float(r0["a"]) == pytest.approx(float(F.cross_entropy(out.unimodal_logits["a"], y)), rel=1e-6)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("worker", None)
    assert torch.equal(r0["rows"], r1["rows"]) and r0["rows"].shape == (11, 3)
    order = list(range(0, 11, 2)) + list(range(1, 11, 2))  # rank 0's rows, then rank 1's
    assert torch.equal(r0["rows"], xa[order]) and torch.equal(r0["y"], y[order])
