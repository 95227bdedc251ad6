"""``--preset`` of ``bench synthetic`` and ``bench compare``: today's defaults under their own
name, the competition presets' overrides reaching every run, ``--set`` winning over them."""

from __future__ import annotations

import argparse

import pytest

from mmbalance.bench.cli import _settings
from mmbalance.bench.synthetic import DEFAULT_SETTINGS, HEADLINE_CELL, PRESETS, QUICK_SETTINGS, compare_preset, \
    get_preset
from mmbalance.config import build_config
from mmbalance.errors import ConfigError
from mmbalance.methods import get_method


def _args(**kw):
    base = dict(quick=False, seeds=None, n=None, epochs=None, set=[], preset="default")
    return argparse.Namespace(**{**base, **kw})


def test_default_preset_is_todays_defaults():
    assert _settings(_args()) == DEFAULT_SETTINGS
    assert _settings(_args(quick=True)) == QUICK_SETTINGS
    assert PRESETS["default"].overrides == () and compare_preset("default", "mfeat", {"a": 1}) == ({"a": 1}, None)


@pytest.mark.parametrize("name", ["competition-adam", "competition-sgd"])
def test_competition_presets_reach_every_run_and_set_wins(name):
    preset = get_preset(name)
    settings = _settings(_args(preset=name))
    want = {k: v for k, v in preset.overrides if k != "data.unique2"}
    assert dict(settings.extra) == want
    assert settings.n == (preset.n or DEFAULT_SETTINGS.n) and settings.seeds == (preset.seeds or DEFAULT_SETTINGS.seeds)
    run = settings.run_overrides(0.1, 0.8, 3)
    assert all(run[k] == v for k, v in want.items()) and run["data.seed"] == 3
    assert dict(_settings(_args(preset=name, set=["data.signal1=2.5"])).extra)["data.signal1"] == 2.5
    extra, seeds = compare_preset(name, "synthetic", {"data.signal2": 7.0})
    assert extra["data.signal2"] == 7.0 and seeds == preset.seeds
    assert all(extra[k] == v for k, v in HEADLINE_CELL) and extra["data.unique1"] / extra["data.shared"] == 8
    cfg = build_config("joint", "synthetic", extra, get_method("joint").Hyperparameters)  # every key is valid
    assert cfg.data.family == dict(preset.overrides)["data.family"]
    assert (cfg.optim.name == "sgd") == (name == "competition-sgd")
    assert ("criterion" in preset.help()) and (preset.met is not None)


def test_bad_presets_are_one_clear_line():
    with pytest.raises(ConfigError, match="unknown --preset 'nope'.*default, competition-adam, competition-sgd"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="--preset competition-sgd sets the synthetic generator"):
        compare_preset("competition-sgd", "mfeat", {})


def test_competition_presets_are_the_setting_the_regime_study_chose():
    """docs/evidence/regime_fusion.md's decision: G2 (signed, latent 50, signal2 4, depth2 3) at
    n 20,000 with seeds 0-9; Adam met the criterion, SGD (lr 0.03) did not and says so."""
    for name in ("competition-adam", "competition-sgd"):
        extra, seeds = compare_preset(name, "synthetic", {})
        data = build_config("joint", "synthetic", extra, get_method("joint").Hyperparameters).data
        assert (data.family, data.latent_dim, data.signal2, data.depth2, data.n) == ("signed", 50, 4.0, 3, 20000)
        assert (data.signal1, data.depth1, data.unique2) == (1.5, 1, 0.1) and seeds == tuple(range(10))
    assert PRESETS["competition-adam"].met is True and "DID NOT" not in PRESETS["competition-adam"].help()
    sgd = PRESETS["competition-sgd"]
    assert sgd.met is False and "DID NOT MEET the competition criterion" in sgd.help()
    assert dict(sgd.overrides)["optim.lr"] == 0.03
