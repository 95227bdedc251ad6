"""Two-process DDP on CPU through the product's own ``train()``: every method with a gradient
or learning-rate hook ends with identical weights on both ranks (their balancing coefficients
are averaged across ranks), val/test metrics count every row of the split exactly once, and a
run stopped in the middle of an epoch and resumed ends bit-identical to an uninterrupted one
on each rank. The training sampler's shards are checked without a process group."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

WORKER = Path(__file__).with_name("ddp_train_worker.py")
METHODS = ["ogm", "ogm_ge", "agm", "mlb", "pmr", "mslr", "mcr", "mbsd", "umt",  # umt: its frozen teachers too
           "mmpareto",  # per-term gradients averaged over ranks, then combined (Method.combine_gradients)
           "cml", "opm", "gblending", "lfm", "dnr",
           "mla", "reconboost"]  # mla: M optimizer steps a batch; reconboost: 3 phases (worker's EXTRA)  # opm's masks and gblending's epoch pass (worker's EXTRA: both act)
METHODS += ["greedy"]  # MMTM between ResNet stages (conftest's tiny ResNet .npz); the worker's EXTRA opens windows
METHODS += ["valuation", "amco"]  # valuation: a re-sampled epoch 1 (worker's EXTRA); amco: masks, dependence
RESUMED = ["mcr", "mmpareto"]  # mcr: permutations and dropout from torch's global stream, balancing state
# across ranks; mmpareto: the combined-gradient path through Lightning's manual backward
RESUMED += ["valuation"]  # stopped inside its re-sampled epoch 1: the plan's per-rank shards resume mid-epoch
#: final global step of the 2-epoch runs: 7 + 7 batches a rank; valuation's re-sampled epoch 1 has
#: 30 batches a rank (its plan's copies, padded to equal shards), so 7 + 30
FINAL_STEP = {"valuation": 37}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    proc = subprocess.run([sys.executable, str(WORKER), str(root), *METHODS, "--resume", *RESUMED], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.mark.parametrize("method", METHODS)
def test_two_rank_ddp_weights_identical(ddp_runs, method):
    ranks = [torch.load(ddp_runs / method / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["first"] != ranks[1]["first"], "ranks should read different shards"
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert s0.keys() == s1.keys()
    for key, value in s0.items():
        if key.endswith(("running_mean", "running_var")):
            continue  # BatchNorm statistics (greedy's ResNets): DDP gives every rank rank 0's before each
            # forward, then each rank's last batch updates its own; only rank 0's are saved
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, s1[key]), f"{method}: {key} differs between ranks"
    assert (ddp_runs / method / "metrics.json").exists()


@pytest.mark.parametrize("method", ["mcr", "mslr"])
def test_ddp_metrics_count_every_row_once(ddp_runs, method):
    """metrics.json under 2-process DDP equals a single-process evaluation of the same
    checkpoint on val and test splits of 45 rows (a padding sampler scores 46)."""
    from mmbalance.analysis.runs import load_run
    run = load_run(ddp_runs / method)
    metrics = json.loads((ddp_runs / method / "metrics.json").read_text())
    for split in ("val", "test"):
        dataset = getattr(run.data, split)
        assert len(dataset) % 2 == 1
        loader = torch.utils.data.DataLoader(dataset, batch_size=7)
        with torch.no_grad():
            right = sum(int((run.method.predict(run.method(x)).argmax(-1) == y).sum()) for x, y in loader)
        assert metrics[split]["accuracy"] == pytest.approx(right / len(dataset), abs=1e-6), split


@pytest.mark.parametrize("method", RESUMED)
def test_ddp_mid_epoch_resume_is_bit_identical(ddp_runs, method):
    """Stopped in the middle of epoch 1 (a SIGTERM seen by rank 1 only: both ranks write
    last.ckpt at the same step) and resumed, each rank ends with the uninterrupted run's
    weights and RNG streams, bit for bit, and metrics.json is the same. The ranks' streams
    differ (the worker's RankOneDraws), so each rank must get its own back, not rank 0's;
    and the epoch must go on at the next batch of each rank's shard."""
    out = ddp_runs / "resume" / method
    ckpt = torch.load(out / "interrupted.ckpt", weights_only=True)
    state = ckpt["mmbalance"]
    assert (ckpt["epoch"], ckpt["global_step"], state["epoch_batches"]) == (1, 11, 4), "a mid-epoch checkpoint"
    assert state["world"] == 2 and len(state["rank_rng"]) == 2
    assert not torch.equal(state["rank_rng"][0]["torch_rng"], state["rank_rng"][1]["torch_rng"])
    assert torch.equal(state["rank_rng"][0]["torch_rng"], state["torch_rng"])  # the top level: rank 0's
    for r in (0, 1):
        ref, cut = (torch.load(out / run / f"rank{r}.pt", weights_only=False) for run in ("ref", "cut"))
        assert ref["step"] == cut["step"] == FINAL_STEP.get(method, 14)
        assert ref["state"].keys() == cut["state"].keys()
        for key, value in ref["state"].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, cut["state"][key]), f"rank {r}: {key} differs after the resume"
        assert torch.equal(ref["rng"]["torch"], cut["rng"]["torch"]), f"rank {r}: torch stream"
        keys, pos = ref["rng"]["numpy"]
        assert (keys == cut["rng"]["numpy"][0]).all() and pos == cut["rng"]["numpy"][1], f"rank {r}: numpy stream"
        assert ref["rng"]["python"] == cut["rng"]["python"], f"rank {r}: python stream"
        assert ref["first"] == cut["first"], f"rank {r}: loader generator"
    ref, cut = (json.loads((out / run / "metrics.json").read_text()) for run in ("ref", "cut"))
    assert ref["val"] == cut["val"] and ref["test"] == cut["test"]


def test_resumable_sampler_shards_one_order(monkeypatch):
    """Alone, the training sampler is a RandomSampler on the same generator; under W ranks
    each rank takes every W-th row of that same order, padded as DistributedSampler pads (all
    ranks draw it from equal generators); resume_at skips this rank's first rows. Lightning
    keeps it in place under DDP: it is a DistributedSampler."""
    from torch.utils.data import DistributedSampler, RandomSampler

    from mmbalance.training import samplers
    data = range(11)
    sampler = samplers.ResumableSampler(data, torch.Generator().manual_seed(3))
    assert isinstance(sampler, DistributedSampler)
    state = sampler.generator.get_state()
    order = list(RandomSampler(data, generator=torch.Generator().manual_seed(3)))
    assert list(sampler) == order and torch.equal(sampler.epoch_state, state)
    for world in (2, 3, 12):
        padded = (order * 2)[:-(-11 // world) * world]
        for rank in range(world):
            monkeypatch.setattr(samplers, "_ranks", lambda: (rank, world))
            sampler.generator.set_state(state)
            assert len(sampler) == len(padded) // world
            assert list(sampler) == padded[rank::world], (rank, world)
            sampler.resume_at(state, 2)  # what a checkpoint 2 rows into this rank's epoch restores
            assert list(sampler) == padded[rank::world][2:], (rank, world)


def test_ddp_checkpoint_in_one_process_takes_rank_0_streams_and_warns(ddp_runs):
    """The mid-epoch checkpoint of 2 ranks, loaded in one process: rank 0's streams, the
    sampler goes on 4 batches into the epoch, and a warning says that the rest of that epoch
    cannot read exactly the rows the two shards had left."""
    import lightning as L

    from mmbalance.training.build import build_data, build_method, build_model, loaders
    from mmbalance.training.module import BalanceModule

    from ..conftest import tiny_config
    cfg = tiny_config("mcr")
    L.seed_everything(0, verbose=False)
    data = build_data(cfg)
    module = BalanceModule(build_method(cfg, build_model(data, cfg)), cfg)
    module.loader_generator, (train_dl, _, _) = loaders(data, cfg, 0)
    module.train_sampler = train_dl.sampler
    ckpt = torch.load(ddp_runs / "resume" / "mcr" / "interrupted.ckpt", weights_only=True)
    ours = ckpt["mmbalance"]["rank_rng"][0]
    saved = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):  # the global streams as this test found them, after it
        with pytest.warns(UserWarning, match="mid-epoch on 1 device.* written on 2"):
            module.on_load_checkpoint(ckpt)
        assert torch.equal(torch.get_rng_state(), ours["torch_rng"])
        assert random.getstate() == ours["python_rng"]
    np.random.set_state(saved[0])
    random.setstate(saved[1])
    assert torch.equal(module.loader_generator.get_state(), ours["loader_rng"])
    assert len(list(train_dl.sampler)) == len(data.train) - 4 * cfg.data.batch_size
