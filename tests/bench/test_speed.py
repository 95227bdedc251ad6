"""`mmbalance bench speed` on tiny settings: files, rows, the re-encoding reference, and
chunked MIPD against the one-pass MIPD. No test asserts a speed."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

from mmbalance import MCRLoss, MLPEncoder, MultimodalModel
from mmbalance.bench import speed
from mmbalance.cli import main

TINY = speed.Setting("synthetic", "(a) tiny MLP", (("x1", (6,), "mlp"), ("x2", (5,), "mlp")),
                     (("feature_dim", 4), ("hidden", 8), ("layers", 1), ("dropout", 0.0)), 3, 6)


@pytest.fixture
def tiny_settings(monkeypatch):
    monkeypatch.setitem(speed.QUICK_SETTINGS, "synthetic", TINY)
    monkeypatch.setitem(speed.MODALITY_SWEEP, "synthetic", (2, 3))


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_bench_speed_writes_csv_table_and_figures(tmp_path, capsys, tiny_settings):
    assert main(["bench", "speed", "--quick", "--settings", "synthetic", "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    labels = [v.label for v in speed.METHODS + speed.PERMUTATION_SWEEP]
    assert sum(f"[synthetic] {label} " in out for label in labels) == len(labels)  # progress per cell
    with open(tmp_path / "speed.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["setting", "method", "ms_per_step", "peak_memory_mb"]
    rows = _rows(tmp_path / "speed.csv")
    assert [r["method"] for r in rows] == labels and {r["setting"] for r in rows} == {"synthetic"}
    assert all(float(r["ms_per_step"]) > 0 and float(r["peak_memory_mb"]) > 0 for r in rows)
    details = {r["method"]: r for r in _rows(tmp_path / "speed_details.csv")}
    assert details["mcr_p32"]["fused_rows"] == str(2 * 6 * 32) and details["joint"]["mipd_terms"] == "0"
    sweep = _rows(tmp_path / "modalities.csv")
    assert [(r["modalities"], r["method"], r["mipd_terms"]) for r in sweep] == [
        ("2", "multiloss", "0"), ("2", "mcr_p32", "2"), ("2", "mcr_p32_singletons", "2"),
        ("3", "multiloss", "0"), ("3", "mcr_p32", "6"), ("3", "mcr_p32_singletons", "3")]
    table = (tmp_path / "speed.md").read_text()
    assert "| mcr_reencode |" in table and "x multiloss" in table and "| synthetic | 3 | 6 | 3 |" in table
    for name in ("cost_vs_permutations.png", "cost_vs_modalities.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_unknown_method_exits_2_with_one_line(tmp_path, capsys):
    assert main(["bench", "speed", "--methods", "bogus", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown speed benchmark method 'bogus'" in err and err.count("\n") == 1


def test_label_patterns():
    v = speed.variant_by_label("mcr_p64_chunk128_singletons")
    assert (v.method, dict(v.hparams), v.chunk_size) == ("mcr", {"num_permutations": 64, "max_subset_size": 1}, 128)
    assert dict(speed.variant_by_label("mcr_input_noise_p3").hparams)["perturbation"] == "input_noise"
    v = speed.variant_by_label("mcr_p32_mipd_only_compile")
    assert dict(v.hparams) == {"num_permutations": 32, "contrastive_weight": 0.0, "compile": True}
    method = speed.build_method(speed.variant_by_label("mcr_p1_mipd_only"), speed.build_model(TINY))
    assert method.regularizer.contrastive_weight == 0.0 and method.regularizer.mipd.compile_math is False
    with pytest.raises(KeyError):
        speed.variant_by_label("mcr_p0")


def _encoder_calls(label):
    runner = speed.make_runner(TINY, speed.variant_by_label(label), torch.device("cpu"))
    calls = {m: 0 for m in TINY.names}
    for m, enc in runner.method.model.encoders.items():
        enc.register_forward_hook(lambda *a, m=m: calls.__setitem__(m, calls[m] + 1))
    runner.step()
    return calls


def _changed(label):
    """The modalities whose encoder weights one timed step changes, and whether reconboost's
    boost rate moved."""
    runner = speed.make_runner(TINY, speed.variant_by_label(label), torch.device("cpu"))
    runner.step()  # the first step builds the lazy layers; the second is compared
    model = runner.method.model
    before = {m: [p.detach().clone() for p in enc.parameters()] for m, enc in model.encoders.items()}
    rate = runner.method.boost_rate.detach().clone()
    runner.step()
    moved = {m for m, enc in model.encoders.items()
             if any(not torch.equal(a, b) for a, b in zip(before[m], enc.parameters()))}
    return moved, not torch.equal(rate, runner.method.boost_rate.detach())


def test_reconboost_is_timed_in_each_phase():
    """reconboost (epoch 0) boosts x1's learner alone; reconboost_phase2 (epoch 12, stage 1's
    rectifying phase at 4 + 4 epochs a stage) trains both learners and the boost rate."""
    assert speed.variant_by_label("reconboost_phase2").epoch == 12
    assert "epoch=12" in speed.variant_by_label("reconboost_phase2").describe()
    assert _changed("reconboost") == ({"x1"}, False)
    assert _changed("reconboost_phase2") == ({"x1", "x2"}, True)


def test_mcr_reencode_runs_the_encoders_twice_and_mcr_once():
    assert _encoder_calls("mcr_p32") == {"x1": 1, "x2": 1}
    assert _encoder_calls("mcr_reencode") == {"x1": 2, "x2": 2}
    assert _encoder_calls("mcr_input_zero") == {"x1": 2, "x2": 2}  # one zeroed pass per singleton


def _mipd(chunk, strategy, perturbation, num_classes=3, fusion="concat_linear"):
    torch.manual_seed(0)
    model = MultimodalModel({m: MLPEncoder(4 + i, 3, 5, 1) for i, m in enumerate("abc")}, num_classes, fusion=fusion)
    x = {m: torch.randn(5, 4 + i) for i, m in enumerate("abc")}
    y = torch.tensor([0, 1, 2, 0, 1]) if num_classes > 1 else torch.randn(5)
    loss = MCRLoss(strategy, mipd_weight=1.0, contrastive_weight=0, num_permutations=4, perturbation=perturbation,
                   permutation="all", chunk_size=chunk)
    rows = []
    model.fusion.register_forward_hook(lambda mod, inp, o: rows.append(o.shape[0]))
    out = model(x)
    torch.manual_seed(1)
    terms = loss(model, out, y, inputs=x)
    forward_rows = list(rows)
    terms.total.backward()
    return terms, {n: p.grad for n, p in model.named_parameters()}, (forward_rows, rows[len(forward_rows):])


@pytest.mark.parametrize("strategy", ["greedy", "collaborative", "independent"])
@pytest.mark.parametrize("perturbation", ["permute", "latent_noise", "input_noise", "input_zero"])
def test_chunked_mipd_equals_one_pass(strategy, perturbation):
    whole, g_whole, (rows_whole, again_whole) = _mipd(None, strategy, perturbation)
    chunked, g_chunked, (rows_chunked, again) = _mipd(12, strategy, perturbation)  # 2 copies of B = 5 per call
    zero = perturbation == "input_zero"
    assert rows_whole[1:] == [] and again_whole == []  # linear fusion: products perturbed, no fusion pass
    assert rows_chunked[1:] == ([] if zero else [10, 10] * 6)  # one copy of B is never split
    assert again == ([] if zero else [10] * 12)  # the trade-off: backward runs each chunk's fusion again
    torch.testing.assert_close(chunked.terms["mipd"], whole.terms["mipd"], rtol=1e-6, atol=1e-7)
    assert chunked.logs.keys() == whole.logs.keys()
    for name, grad in g_whole.items():
        if grad is None:
            assert g_chunked[name] is None, name
        else:
            torch.testing.assert_close(g_chunked[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_chunked_regression_and_nonlinear_fusion_match():
    for num_classes, fusion in ((1, "concat_mlp"), (3, "gated")):
        whole, g_whole, _ = _mipd(None, "greedy", "permute", num_classes, fusion)
        chunked, g_chunked, _ = _mipd(3, "greedy", "permute", num_classes, fusion)
        torch.testing.assert_close(chunked.total, whole.total, rtol=1e-6, atol=1e-7)
        for name, grad in g_whole.items():
            torch.testing.assert_close(g_chunked[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_chunking_bounds_what_the_mipd_keeps_for_backward():
    # a non-decomposable fusion: a linear one perturbs (B, C) products and needs no chunks
    setting = dataclasses.replace(TINY, batch=16, model_cfg=TINY.model_cfg + (("fusion", "concat_mlp"),))
    saved = {label: speed.saved_for_backward_mb(speed.make_runner(setting, speed.variant_by_label(label),
                                                                    torch.device("cpu")))
             for label in ("mcr_p64", "mcr_p256", "mcr_p256_chunk64")}
    assert saved["mcr_p256"] > 3 * saved["mcr_p64"]  # one pass: grows with B*P
    assert saved["mcr_p256_chunk64"] < saved["mcr_p64"] / 4  # chunked: only the chunks' inputs


def test_chunk_size_is_validated():
    from mmbalance.errors import ConfigError
    with pytest.raises(ConfigError, match="chunk_size"):
        MCRLoss(chunk_size=0)


def test_every_setting_builds_and_steps_at_quick_sizes():
    for setting in speed.QUICK_SETTINGS.values():
        small = dataclasses.replace(setting, batch=2)
        runner = speed.make_runner(small, speed.variant_by_label("mcr_p8"), torch.device("cpu"))
        runner.step()
        assert runner.method.model.modalities == small.names
    assert speed.modality_setting(speed.SETTINGS["mosei"], 2).names == ["video", "text"]
    assert speed.modality_setting(speed.SETTINGS["mosei"], 4).names == ["video", "audio", "text", "audio2"]
    assert speed.modality_setting(speed.SETTINGS["synthetic"], 4).names == ["x1", "x2", "x3", "x4"]


def test_profile_writes_phase_and_op_tables(tmp_path, tiny_settings, capsys):
    assert main(["bench", "speed", "--quick", "--settings", "synthetic", "--profile", "multiloss", "mcr_p8",
                 "--profile-steps", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "profile_synthetic_mcr_p8.txt").read_text()
    assert "mcr/mipd" in text and "step/backward" in text and "Self CPU" in text
    assert "mcr/" not in (tmp_path / "profile_synthetic_multiloss.txt").read_text()
