"""`bench speed` settings (d) and (e), the paper's Conformer and Swin models: their sizes are
the checked-in configs' sizes, the Conformer setting builds training's own encoder classes, and
the round-by-round ratio lines. No test asserts a speed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mmbalance.bench import speed
from mmbalance.bench.speed.report import CellResult, ratio_lines, round_ratios
from mmbalance.bench.speed.timing import Timing
from mmbalance.config import DataConfig, load_yaml
from mmbalance.data.cremad import MAX_FACES

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_settings_have_the_checked_in_configs_sizes():
    conformer = load_yaml(CONFIGS / "cremad" / "conformer" / "mcr.yaml")
    d = speed.SETTINGS["cremad_conformer"]
    rate, seconds = conformer["data.sample_rate"], conformer.get("data.audio_seconds", DataConfig().audio_seconds)
    assert dict((m, s) for m, s, _ in d.modalities) == {"audio": (int(rate * seconds),), "video": (MAX_FACES, 1408)}
    assert dict(d.model_cfg) == {k: conformer[f"model.{k}"] for k in ("feature_dim", "hidden", "layers", "dropout")}
    assert d.batch == conformer["data.batch_size"] and d.num_classes == 6
    w2v = speed.cells.WAV2VEC2_LARGE_ROBUST
    assert (w2v["hidden_size"], w2v["num_hidden_layers"], w2v["layerdrop"]) == (1024, 12, 0.0)

    swin = load_yaml(CONFIGS / "sthsth" / "swin" / "mcr.yaml")
    e = speed.SETTINGS["sthsth_swin"]
    clip = (3, swin["data.num_frames"], DataConfig().image_size, DataConfig().image_size)
    assert [(m, s, enc) for m, s, enc in e.modalities] == [("video", clip, "swin3d"), ("flow", clip, "swin3d")]
    assert e.batch == swin["data.batch_size"] and e.num_classes == 174 and dict(e.model_cfg)["base_width"] == 64
    assert speed.variant_by_label("mcr_p32_ceb").hparams == (("num_permutations", 32), ("ceb_weight", 1.0))


def test_the_conformer_setting_builds_trainings_encoder_classes_and_steps():
    pytest.importorskip("transformers")
    from mmbalance.models.conformer import BackboneConformer, ConformerEncoder
    from mmbalance.models.pretrained import PretrainedEncoder

    setting = dataclasses.replace(speed.QUICK_SETTINGS["cremad_conformer"], batch=2)
    runner = speed.make_runner(setting, speed.variant_by_label("mcr_p4_ceb"), torch.device("cpu"))
    audio, video = (runner.method.model.encoders[m] for m in ("audio", "video"))
    assert isinstance(audio, BackboneConformer) and isinstance(audio.backbone, PretrainedEncoder)
    assert isinstance(video, ConformerEncoder) and audio.backbone.backbone.training
    runner.step()
    assert all(p.grad is not None for p in audio.parameters())


def test_ratio_lines_pair_the_cells_of_each_round():
    setting = speed.QUICK_SETTINGS["synthetic"]

    def cell(label, samples):
        return CellResult(setting, speed.variant_by_label(label), Timing(samples=samples))

    ref, mcr = cell("multiloss", [10.0, 20.0, 10.0]), cell("mcr_p32", [11.0, 19.0, 10.5])
    assert round_ratios(mcr.timing, ref.timing) == [1.1, 0.95, 1.05]
    lines = ratio_lines([ref, mcr, cell("joint", [1.0, 1.0, 1.0])])
    assert lines[-1] == "- synthetic: mcr_p32 / multiloss per round: median 1.050, range 0.950-1.100 (3 rounds)"
    assert ratio_lines([mcr]) == []
