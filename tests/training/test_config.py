"""Configuration precedence, type checks and unknown keys."""

from __future__ import annotations

import pytest

from mmbalance import ConfigError
from mmbalance.config import build_config, load_yaml, parse_set_items
from mmbalance.methods import get_method


def _build(overrides, method="mcr"):
    return build_config(method, "synthetic", overrides, get_method(method).Hyperparameters)


def test_precedence_defaults_yaml_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.01\n  name: sgd\nmethod:\n  mipd_weight: 0.5\n")
    overrides = load_yaml(path)
    overrides.update(parse_set_items(["optim.lr=1e-3", "method.strategy=independent"]))
    cfg = _build(overrides)
    assert cfg.optim.lr == 1e-3 and cfg.optim.name == "sgd"  # --set beats YAML, YAML beats code
    assert cfg.hparams.mipd_weight == 0.5 and cfg.hparams.strategy == "independent"
    assert cfg.hparams.num_permutations == 32 and cfg.optim.weight_decay == 1e-4  # code defaults


@pytest.mark.parametrize("key,message", [
    ("data.nn", "valid data keys: batch_size"),
    ("method.mipd", "valid method keys: unimodal_weight"),
    ("bogus", "valid: seed"),
])
def test_unknown_keys_list_valid_ones(key, message):
    with pytest.raises(ConfigError, match=message):
        _build({key: 1})


@pytest.mark.parametrize("key,value", [("trainer.max_epochs", "ten"), ("method.num_permutations", 1.5),
                                       ("trainer.deterministic", "maybe"), ("optim.lr", -1.0),
                                       ("data.shared", 1.5), ("optim.name", "rmsprop")])
def test_wrong_type_or_range(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        _build({key: value})


def test_set_items_are_parsed_as_yaml():
    assert parse_set_items(["a.b=3", "c=true", "d=[x, y]", "e=1e-3"]) == {"a.b": 3, "c": True, "d": ["x", "y"],
                                                                         "e": "1e-3"}
    assert _build({"optim.lr": "1e-3"}).optim.lr == 1e-3  # YAML 1.1 reads 1e-3 as text; coerced
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_items(["novalue"])
