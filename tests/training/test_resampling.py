"""Per-sample re-sampling of the training set (``Method.sample_plan``): the sampler expands a
plan's copies deterministically from the run's generator, resumes mid-epoch exactly, shards
under DDP, and works with loader workers; a run resumed inside a re-sampled epoch ends as an
uninterrupted one."""

from __future__ import annotations

import collections
import shutil

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mmbalance.data.arrays import collate
from mmbalance.methods.base import KEEP, SamplePlan
from mmbalance.training import samplers, train
from mmbalance.training.samplers import ResampledDataset, ResumableSampler, plan_items

from ..conftest import tiny_config
from .test_checkpoints import Snapshot, _ckpt

N = 10
KEEP_TABLE = torch.tensor([[True, True], [True, False], [False, True]])  # full, only a, only b


def _plan(seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4, (N, 3), generator=g)
    counts[:, 0] = 1
    return SamplePlan(counts, KEEP_TABLE)


def test_items_are_the_plans_copies_variant_by_variant():
    plan = _plan()
    items = plan_items(plan, N)
    expected = []
    for k, bits in enumerate((3, 1, 2)):  # bit j: modality j kept
        for row in range(N):
            expected += [(row, bits)] * int(plan.counts[row, k])
    assert items == expected
    assert plan_items(SamplePlan(torch.ones(N, 1, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)), N) \
        == list(range(N))
    with pytest.raises(ValueError, match="counts for 10 rows"):
        plan_items(plan, N + 1)


def _order(sampler):
    return list(iter(sampler))


def test_order_is_a_seeded_shuffle_of_the_copies_and_no_plan_is_the_plain_order():
    plan = _plan()
    a = ResumableSampler(range(N), torch.Generator().manual_seed(3), lambda: plan)
    b = ResumableSampler(range(N), torch.Generator().manual_seed(3), lambda: plan)
    first, second = _order(a), _order(a)
    assert first == _order(b) and second == _order(b)  # same seed: same epochs
    assert first != second  # each epoch draws anew
    assert collections.Counter(first) == collections.Counter(plan_items(plan, N))
    plain = ResumableSampler(range(N), torch.Generator().manual_seed(3))
    none = ResumableSampler(range(N), torch.Generator().manual_seed(3), lambda: None)
    assert [_order(plain) for _ in range(3)] == [_order(none) for _ in range(3)]
    with pytest.raises(TypeError):
        len(a)
    assert len(plain) == N


def test_resume_at_replays_the_epoch_from_the_saved_state():
    plan = _plan()
    s = ResumableSampler(range(N), torch.Generator().manual_seed(5), lambda: plan)
    _order(s)
    full = _order(s)
    state = s.epoch_state  # the second epoch's
    again = ResumableSampler(range(N), torch.Generator().manual_seed(99), lambda: plan)
    again.resume_at(state, 7)
    assert _order(again) == full[7:]


def test_ddp_shards_cover_the_padded_order_with_equal_lengths(monkeypatch):
    plan = _plan()
    shards = []
    for rank in range(3):
        monkeypatch.setattr(samplers, "_ranks", lambda r=rank: (r, 3))
        shards.append(_order(ResumableSampler(range(N), torch.Generator().manual_seed(1), lambda: plan)))
    monkeypatch.setattr(samplers, "_ranks", lambda: (0, 1))
    whole = _order(ResumableSampler(range(N), torch.Generator().manual_seed(1), lambda: plan))
    total = -(-len(whole) // 3) * 3
    padded = (whole * 2)[:total]
    assert [len(s) for s in shards] == [total // 3] * 3
    assert [padded[r::3] for r in range(3)] == shards
    monkeypatch.setattr(samplers, "_ranks", lambda: (2, 3))  # rank 2 resumed 4 rows into its shard
    first = ResumableSampler(range(N), torch.Generator().manual_seed(1), lambda: plan)
    _order(first)
    again = ResumableSampler(range(N), torch.Generator().manual_seed(0), lambda: plan)
    again.resume_at(first.epoch_state, 4)
    assert _order(again) == shards[2][4:]


def _dataset():
    x = torch.arange(N, dtype=torch.float32)
    return TensorDataset(x), [({"a": x[i:i + 1], "b": -x[i:i + 1]}, torch.tensor(i)) for i in range(N)]


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _read(workers):
    plan = _plan()
    data = ResampledDataset(_Items(_dataset()[1]), ["a", "b"])
    gen = torch.Generator().manual_seed(4)
    loader = DataLoader(data, batch_size=4, sampler=ResumableSampler(data, gen, lambda: plan), generator=gen,
                        num_workers=workers, collate_fn=collate, persistent_workers=workers > 0)
    got = []
    for _ in range(2):  # two epochs (persistent workers keep their dataset copy)
        for inputs, labels in loader:
            assert torch.equal(inputs["b"], -inputs["a"]) and torch.equal(inputs["a"][:, 0].long(), labels)
            bits = (inputs[KEEP][:, 0].long() + 2 * inputs[KEEP][:, 1].long()).tolist()
            got += list(zip(labels.tolist(), bits))
    return got, plan


def test_batches_carry_each_copys_keep_mask_and_workers_read_the_same_rows():
    one, plan = _read(0)
    assert collections.Counter(one) == collections.Counter(plan_items(plan, N) * 2)
    assert one[:len(one) // 2] != one[len(one) // 2:]
    two = _read(2)[0]  # persistent workers: the loader draws no new worker seed in epoch 2, so
    assert two[:len(one) // 2] == one[:len(one) // 2]  # only the first epochs must match
    assert collections.Counter(two) == collections.Counter(one)


def test_a_run_resumed_inside_a_re_sampled_epoch_ends_as_an_uninterrupted_one(tmp_path):
    """valuation re-samples after epoch 0 (warmup 1): epoch 1 is longer than 14 batches, and a
    step checkpoint inside it (step 20) resumes to the same weights and metrics."""
    cfg = tiny_config("valuation", trainer__max_epochs=2, trainer__checkpoint_every_n_steps=5, method__warmup=1)
    snap = Snapshot(tmp_path / "ref", tmp_path / "moved", 20)
    reference = train(cfg, tmp_path / "ref", callbacks=[snap])
    assert snap.done
    epoch, step, batches = _ckpt(tmp_path / "moved" / "checkpoints" / "last.ckpt")
    assert (epoch, step, batches) == (1, 20, 6), "a step checkpoint inside the first re-sampled epoch"
    counts = torch.load(tmp_path / "moved" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    counts = counts["method._extra_state"]["counts"]
    assert counts.shape == (210, 3) and int(counts.sum()) > 210 + 6 * 16  # copies added
    resumed = train(cfg, tmp_path / "moved", resume=True)
    assert resumed["val"] == reference["val"] and resumed["test"] == reference["test"]
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "moved" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] > 2 * 14  # longer epochs than the 14 plain batches
    for key, value in a["state_dict"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["state_dict"][key]), key
    shutil.rmtree(tmp_path)


@pytest.mark.slow
def test_sigkill_after_a_re_sampled_epoch_then_resume_is_identical(tmp_path):
    """Killed once the checkpoint of epoch 1 (the first re-sampled epoch) is written, resumed in
    another process: the same metrics as the uninterrupted run."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["data.n=1000", "data.dim=16", "data.batch_size=16", "model.feature_dim=8", "model.hidden=16",
            "trainer.max_epochs=3", "trainer.patience=0", "trainer.progress=false", "method.warmup=1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmbalance", "train", "--data", "synthetic", "--method", "valuation", "--set", *args]
    ref = subprocess.run([*cmd, "--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "cut"
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, deadline = out / "checkpoints" / "last.ckpt", time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if last.exists():
            ckpt = torch.load(last, weights_only=True)  # written atomically: whole or absent
            if ckpt["epoch"] >= 1 and ckpt["mmbalance"]["epoch_batches"] == 0:
                break
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed and not (out / "metrics.json").exists()
    done = subprocess.run([*cmd, "--out", str(out), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "ref", out))
    assert a["val"] == b["val"] and a["test"] == b["test"]


def test_per_row_puts_every_ranks_rows_back_in_split_order(monkeypatch):
    """Under 2 ranks (simulated), rank r scores rows r, r+2, ...; per_row returns the split's row
    order, as one process does."""
    from mmbalance.training import passes as passes_module
    from mmbalance.training.passes import EpochPasses

    model = torch.nn.Module()
    model.weight = torch.nn.Parameter(torch.zeros(1))
    model.name = "probe"
    data = _Items([({"a": torch.tensor([float(i)])}, torch.tensor(i)) for i in range(7)])

    def fn(inputs, labels):
        return {"row": labels, "twice": inputs["a"][:, 0] * 2}

    def local(rank):
        monkeypatch.setattr(samplers, "_ranks", lambda: (rank, 2))
        return EpochPasses(model, {"train": data}, batch_size=3).per_row("train", fn)

    shards = [local(0), local(1)]
    assert shards[1]["row"].tolist() == [1, 3, 5]
    monkeypatch.setattr(passes_module, "_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_gather_object", lambda every, mine: every.__setitem__(slice(None), shards))
    whole = local(0)
    assert whole["row"].tolist() == list(range(7))
    assert whole["twice"].tolist() == [2.0 * i for i in range(7)]
