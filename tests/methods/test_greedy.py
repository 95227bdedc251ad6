"""Greedy (Wu et al., ICML 2022): one step's loss and every parameter group's gradient against
a separately written forward (stages, MMTM formula, heads, summed CE); the conditional learning
speeds and ``d`` against a loop over parameter NAMES as the official ``compute_BDR`` does; the
re-balancing windows against a schedule derived by hand from callbacks.py; the refusals, the
search space, and ``mmbalance train`` on a CREMA-D-format fixture and on synthetic data."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mmbalance import ConfigError
from mmbalance.cli import main
from mmbalance.methods import get_method
from mmbalance.methods import greedy as greedy_module
from mmbalance.methods.hparams import int_range, log_uniform, searched
from mmbalance.models import MLPEncoder, MultimodalModel
from mmbalance.models.resnet import ResNet18Audio, ResNet18Video
from mmbalance.types import Batch

Greedy = get_method("greedy")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny ResNets run fastest on one thread."""


def _method(seed=0, **hp):
    torch.manual_seed(seed)
    model = MultimodalModel({"audio": ResNet18Audio(width=2), "video": ResNet18Video(width=2)}, 3)
    return Greedy(model, Greedy.Hyperparameters(**hp)).train()


def _batch(seed=0, b=4):
    gen = torch.Generator().manual_seed(seed)
    x = {"audio": torch.randn(b, 12, 12, generator=gen), "video": torch.randn(b, 3, 2, 12, 12, generator=gen)}
    return Batch(x, torch.arange(b) % 3)


def _independent_loss(method, batch):
    """Stages from the encoders, MMTM written out with F.linear, branch heads, sum of CEs."""
    model, mods = method.model, ["audio", "video"]
    h = {m: model.encoders[m].stage_input(batch.inputs[m]) for m in mods}
    for name in model.encoders["audio"].stages:
        h = {m: model.encoders[m].stage(name, h[m]) for m in mods}
        if name in ("layer2", "layer3", "layer4"):  # model.py:81
            mmtm = model.stage_fusion.mmtm[name]
            gap = torch.cat([h[m].reshape(*h[m].shape[:2], -1).mean(-1) for m in mods], 1)
            s = F.relu(F.linear(gap, mmtm.squeeze.weight, mmtm.squeeze.bias))
            for k, m in enumerate(mods):
                e = torch.sigmoid(F.linear(s, mmtm.excite[k].weight, mmtm.excite[k].bias))
                h[m] = h[m] * e.reshape(*e.shape, *(1,) * (h[m].dim() - 2))
    loss, logits = 0.0, []
    for m in mods:
        z = F.linear(h[m].reshape(*h[m].shape[:2], -1).mean(-1), model.heads[m].weight, model.heads[m].bias)
        loss = loss - z.log_softmax(-1).gather(1, batch.labels[:, None]).mean()  # train.py blend_loss
        logits.append(z)
    return loss, (logits[0] + logits[1]) / 2


def test_one_step_loss_prediction_and_every_gradient_match_a_separate_forward():
    method, batch = _method(), _batch()
    out = method(batch.inputs)
    loss = method.training_loss(batch, out)
    loss.total.backward()
    want, prediction = _independent_loss(method, batch)
    assert loss.total.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(method.predict(out), prediction, rtol=1e-5, atol=1e-6)
    params = [p for p in method.parameters() if p.requires_grad]
    grads = torch.autograd.grad(want, params, allow_unused=True)
    fusion = {id(p) for p in method.model.fusion_parameters()}
    for (name, p), g in zip(method.named_parameters(), grads):
        if id(p) in fusion:  # the late fusion is not part of the model: no gradient, not optimized
            assert p.grad is None and g is None, name
            continue
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6, msg=name)
    optimized = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not optimized & fusion and len(optimized) == len(params) - len(fusion)


def _speeds_by_name(method):
    """callbacks.py:200-228 over named parameters: MMTM parameters of modality k's excitation
    go to bypass k, the shared squeeze to both; encoder and head of k to main k; per group
    the sum of squared gradients over the sum of squared weights."""
    sums = {(k, g): [0.0, 0.0] for k in range(2) for g in ("main", "bypass")}
    for name, p in method.named_parameters():
        w, g = float((p.detach().double() ** 2).sum()), float((p.grad.double() ** 2).sum()) if p.grad is not None else 0.0
        keys = []
        if name.startswith("model.stage_fusion."):
            keys = [(k, "bypass") for k in range(2) if f".excite.{k}." in name] or [(0, "bypass"), (1, "bypass")]
        for k, m in enumerate(("audio", "video")):
            if name.startswith((f"model.encoders.{m}.", f"model.heads.{m}.")):
                keys.append((k, "main"))
        for key in keys:
            sums[key][0] += g
            sums[key][1] += w
    return {key: gw[0] / gw[1] for key, gw in sums.items()}


def test_learning_speeds_and_d_accumulate_as_the_official_compute_bdr():
    method = _method(starting_epoch=99)
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.1)
    total = {key: 0.0 for key in ((k, g) for k in range(2) for g in ("main", "bypass"))}
    for step in range(2):
        optimizer.zero_grad()
        batch = _batch(step)
        method.training_loss(batch, method(batch.inputs)).total.backward()
        for key, v in _speeds_by_name(method).items():
            total[key] += v
        logs = method.after_backward()
        optimizer.step()
    for k in range(2):
        assert float(method.speeds[k, 0]) == pytest.approx(total[(k, "main")], rel=1e-6)
        assert float(method.speeds[k, 1]) == pytest.approx(total[(k, "bypass")], rel=1e-6)
    d = math.log10(total[(0, "bypass")] / total[(0, "main")]) - math.log10(total[(1, "bypass")] / total[(1, "main")])
    assert logs["d"] == pytest.approx(d, rel=1e-6) and float(method.d) == pytest.approx(d, rel=1e-6)
    assert total[(0, "main")] != total[(1, "main")] and abs(d) > 0


def test_windows_open_after_the_step_whose_d_exceeds_epsilon_and_last_window_steps(monkeypatch):
    # epoch 0 is locked (starting_epoch 1); script d per accumulate call
    script = iter([0.5, -0.5, 0.005, -0.02, 0.3, 0.001])
    calls = []

    def scripted(speeds):
        calls.append(step)
        return next(script)

    monkeypatch.setattr(greedy_module, "imbalance", scripted)
    method = _method(epsilon=0.01, window=3, starting_epoch=1)
    frozen, no_grad_excite = [], []
    for step in range(12):
        method.on_epoch_start(0 if step < 2 else 1)
        batch = _batch(step, b=2)
        out = method(batch.inputs)
        frozen.append(method.stage_fusion.frozen)
        method.zero_grad()
        method.training_loss(batch, out).total.backward()
        no_grad_excite.append([all(p.grad is None for p in method.stage_fusion.modality_parameters(k)) for k in range(2)])
        method.after_backward()
    # steps 0, 1: locked despite |d| > eps; step 2: |d| < eps; step 3: d = -0.02 -> modality 1
    # for the next 3 steps (4, 5, 6), no accumulation inside; step 7: d = 0.3 -> modality 0 for 8-10
    assert frozen == [None, None, None, None, 1, 1, 1, None, 0, 0, 0, None]
    assert calls == [0, 1, 2, 3, 7, 11]
    assert no_grad_excite[4] == [False, True] and no_grad_excite[8] == [True, False]
    assert no_grad_excite[7] == [False, False]
    method.eval()  # evaluation forwards are never frozen and leave the averages alone
    method.window_open.fill_(True)
    steps = int(method.stage_fusion.mmtm["layer2"].steps)
    method(_batch(0, b=2).inputs)
    assert method.stage_fusion.frozen is None and int(method.stage_fusion.mmtm["layer2"].steps) == steps == 12


def test_requirements_and_bad_options_are_one_clear_line():
    flat = MultimodalModel({"a": MLPEncoder(4, 3), "b": MLPEncoder(4, 3)}, 2)
    with pytest.raises(ConfigError) as err:
        Greedy(flat)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("method 'greedy' needs encoders that expose their stages")
    assert "(got a: MLPEncoder, b: MLPEncoder)" in str(err.value)
    three = MultimodalModel({m: ResNet18Video(width=2) for m in "abc"}, 2)
    with pytest.raises(ConfigError, match="method 'greedy' needs exactly two modalities"):
        Greedy(three)
    with pytest.raises(ConfigError, match="mmtm_stages 'layer9'; valid stage names: stem, layer1"):
        _method(mmtm_stages="layer9")
    with pytest.raises(ConfigError, match="window >= 1"):
        _method(window=0)
    assert len(_method(mmtm_stages="layer1,layer2,layer3,layer4").stage_fusion.mmtm) == 4  # BalanceBenchmark's


def test_search_space_and_defaults_are_the_official_ones():
    assert searched(Greedy.Hyperparameters) == {"epsilon": log_uniform(1e-3, 1e-1), "window": int_range(1, 20)}
    hp = Greedy.Hyperparameters()
    assert (hp.epsilon, hp.window, hp.starting_epoch, hp.ratio, hp.mmtm_stages, hp.average_bug) == (
        0.01, 5, 1, 4.0, "layer2,layer3,layer4", False)


def test_train_on_a_cremad_fixture_and_refuse_synthetic(tmp_path, capfd):
    from mmbalance.testing.fixtures import write_cremad
    write_cremad(tmp_path / "cremad", train_per_class=2, test_per_class=1, frames=1)
    args = ["train", "--data", "cremad", "--method", "greedy", "--config", "configs/cremad/greedy.yaml",
            "--set", f"data.root={tmp_path / 'cremad'}", "data.image_size=16", "model.base_width=2",
            "data.batch_size=4", "data.audio_seconds=0.5", "trainer.max_epochs=1", "trainer.progress=false", "method.starting_epoch=0",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "greedy" and 0 <= metrics["test"]["accuracy"] <= 1
    capfd.readouterr()
    code = main(["train", "--data", "synthetic", "--method", "greedy", "--set", "data.n=60",
                 "--out", str(tmp_path / "flat")])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: method 'greedy' needs encoders that expose their stages") and "MLPEncoder" in err


def test_bench_compare_and_synthetic_leave_greedy_out_of_mlp_benchmarks_and_refuse_it_when_named(capsys):
    from mmbalance.bench.compare import runnable
    from mmbalance.bench.runner import method_variants

    from ..conftest import STAGEWISE, stagewise_npz
    every = method_variants()
    kept = runnable(every, None, "synthetic", {"data.n": 60}, "bench synthetic")
    assert [v.label for v in kept] == [v.label for v in every if v.method != "greedy"]
    assert capsys.readouterr().out.strip() == ("bench synthetic: greedy left out: method 'greedy' needs encoders that "
                                               "expose their stages for intermediate fusion (ResNet-18: model.encoder="
                                               "resnet18_audio or resnet18_video) (got x1: MLPEncoder, x2: MLPEncoder)")
    with pytest.raises(ConfigError, match="^bench compare: method 'greedy' needs encoders that expose their stages"):
        runnable(method_variants(["joint,greedy"]), ["joint,greedy"], "synthetic", {"data.n": 60}, "bench compare")
    images = runnable(method_variants(["joint", "greedy"]), ["joint", "greedy"], stagewise_npz(), STAGEWISE, "x")
    assert [v.label for v in images] == ["joint", "greedy"]  # ResNet encoders: the same budget as every method
