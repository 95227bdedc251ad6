"""Options a person can discover: ``train --help`` lists the methods, data
sources and config sections; ``--print-config``; ``--version``; "did you mean" on unknown
names; ``unimodal`` needs ``method.modality``."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from mmbalance.cli import _parser, main
from mmbalance.config import SECTIONS, build_config, load_yaml
from mmbalance.data import DATASETS
from mmbalance.errors import ConfigError
from mmbalance.methods import REGISTRY, get_method

from .conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
TINY_SET = [f"{k}={v}" for k, v in TINY.items()]


def _exit(argv, capsys):
    """Runs the command; returns (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's --help and --version
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_is_the_packages(capsys):
    code, out, _ = _exit(["--version"], capsys)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert code == 0 and out.strip() == f"mmbalance {version}"


def test_train_help_lists_methods_data_and_sections(capsys):
    code, out, _ = _exit(["train", "--help"], capsys)
    assert code == 0
    lines = out.splitlines()
    for name, cls in REGISTRY.items():  # one line each, with its description
        assert [l for l in lines if l.split()[:1] == [name]] == [f"  {name:18s}{cls.description}"], name
    for name in ["synthetic", *DATASETS]:
        assert any(l.split()[:1] == [name] for l in lines), name
    text = " ".join(out.split())
    for section, cls in SECTIONS.items():
        assert f"{section}.*" in text
        for f in dataclasses.fields(cls):  # every key is findable in the help
            assert re.search(rf"\b{f.name}\b", text), f"{section}.{f.name}"
    assert "method.*" in text and "--print-config" in text


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


def test_no_help_text_mentions_an_issue():
    for parser in _all_parsers(_parser()):
        assert not re.search(r"\bissue\b", parser.format_help(), re.I), parser.prog


@pytest.mark.parametrize("method", list(REGISTRY))
def test_print_config_is_a_config_file_of_every_value(method, tmp_path, capsys):
    sets = ["trainer.max_epochs=3", "optim.lr=0.01", "data.n=400"]
    code, out, err = _exit(["train", "--data", "synthetic", "--method", method, "--set", *sets,
                            "--print-config"], capsys)
    assert code == 0, err
    tree = yaml.safe_load(out)
    assert tree["trainer"]["max_epochs"] == 3 and tree["optim"]["lr"] == 0.01 and tree["data"]["n"] == 400
    for section, cls in SECTIONS.items():  # every key of the section that applies, at its default
        for f in dataclasses.fields(cls):
            if section == "data" and f.name not in tree["data"]:
                continue  # a built-in dataset's own keys are left out for synthetic data
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if f"{section}.{f.name}" not in ("trainer.max_epochs", "optim.lr", "data.n"):
                assert tree[section][f.name] == default, f"{section}.{f.name}"
    hp = get_method(method).Hyperparameters
    assert tree["method"] == dataclasses.asdict(hp())
    path = tmp_path / "resolved.yaml"
    path.write_text(out)  # fed back as --config, it is the same configuration
    again = build_config(method, "synthetic", load_yaml(path), hp)
    assert again.to_dict() == build_config(method, "synthetic", {"trainer.max_epochs": 3, "optim.lr": 0.01,
                                                                 "data.n": 400}, hp).to_dict()
    assert _exit(["train", "--data", "synthetic", "--method", method, "--config", str(path), "--print-config"],
                 capsys)[1] == out


def test_train_without_out_or_print_config_is_one_error(capsys):
    code, out, err = _exit(["train", "--data", "synthetic", "--method", "joint"], capsys)
    assert code == 2 and err.startswith("error: ") and "--out" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args,hint", [
    (["--method", "mrc"], "did you mean mcr?"),
    (["--method", "joint", "--set", "trainer.max_epoch=3"], "did you mean trainer.max_epochs?"),
    (["--method", "joint", "--set", "trainr.max_epochs=3"], "did you mean trainer.max_epochs?"),
    (["--method", "joint", "--set", "trainr.nothing_like_it=3"], "did you mean trainer.<key>?"),
    (["--method", "joint", "--set", "sed=3"], "did you mean seed?"),
    (["--method", "mcr", "--set", "method.mipd_weigth=0.1"], "did you mean method.mipd_weight?"),
    (["--method", "joint", "--set", "optim.name=adamm"], "did you mean adam?"),
    (["--method", "joint", "--data", "cremda"], "did you mean cremad?"),
    (["--method", "joint", "--data", "synthetc"], "did you mean synthetic?"),
])
def test_unknown_names_get_a_suggestion(args, hint, capsys):
    data = [] if "--data" in args else ["--data", "synthetic"]
    code, _, err = _exit(["train", *data, *args, "--print-config"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert hint in err


def test_far_names_get_no_suggestion_but_the_valid_list(capsys):
    code, _, err = _exit(["train", "--data", "synthetic", "--method", "zzzzzz", "--print-config"], capsys)
    assert code == 2 and "did you mean" not in err and "valid: unimodal, ensemble" in err


def test_unknown_dataset_when_training_fails_before_any_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _exit(["train", "--data", "cremda", "--method", "joint", "--out", str(out)], capsys)
    assert code == 2 and "did you mean cremad?" in err and not out.exists()


def test_unimodal_needs_a_modality(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _exit(["train", "--data", "synthetic", "--method", "unimodal", "--set", *TINY_SET,
                          "--out", str(out)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: method 'unimodal' needs method.modality, one of: x1, x2")
    assert not out.exists()


def test_unimodal_modality_is_taken_as_given():
    from mmbalance.models import MLPEncoder, MultimodalModel
    model = MultimodalModel({"audio": MLPEncoder(3, 4), "video": MLPEncoder(5, 4)}, 3)
    cls = get_method("unimodal")
    with pytest.raises(ConfigError, match="needs method.modality, one of: audio, video"):
        cls(model, cls.Hyperparameters())
    with pytest.raises(ConfigError, match="'vidoe' is not a modality; did you mean video\\? valid: audio, video"):
        cls(model, cls.Hyperparameters(modality="vidoe"))
    assert cls(model, cls.Hyperparameters(modality="video")).modality == "video"
