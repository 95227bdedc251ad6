"""Every checked-in ``configs/<dataset>/<method>.yaml`` loads and builds with the method's
hyperparameters; the MCR configuration of each dataset builds data, model and method."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmbalance.config import build_config, load_yaml
from mmbalance.testing.fixtures import write_fixture
from mmbalance.methods import REGISTRY
from mmbalance.training import build_data, build_method, build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REAL = ("cremad", "ave", "ucf51", "mosi", "mosei", "sthsth")
PAPER_METHODS = ("unimodal", "ensemble", "joint", "multiloss", "mmcosine", "mslr", "pmr", "ogm", "ogm_ge", "agm",
                 "mlb", "unipre_frozen", "unipre_finetuned", "mcr")
YAMLS = sorted(p for d in REAL for p in (CONFIGS / d).glob("*.yaml"))


def test_every_dataset_has_every_method():
    """Every paper method has a config on every data set; a config beyond them (one of the
    field's other methods whose authors' scripts give per-dataset values: dnr, mmpareto) names a registered
    method."""
    for dataset in REAL:
        stems = {p.stem for p in (CONFIGS / dataset).glob("*.yaml")}
        assert set(PAPER_METHODS) <= stems, dataset
        assert stems - set(PAPER_METHODS) <= set(REGISTRY), dataset


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_builds(path):
    method = path.stem
    if method not in REGISTRY:
        if method in PAPER_METHODS:
            pytest.skip(f"method {method!r} is not registered yet")
        pytest.fail(f"{path}: {method!r} is neither a registered method nor one of the paper's 14")
    cfg = build_config(method, path.parent.name, load_yaml(path), REGISTRY[method].Hyperparameters)
    assert cfg.method == method and cfg.data_spec == path.parent.name


@pytest.mark.parametrize("dataset", REAL)
def test_mcr_config_builds_the_paper_model(dataset, tmp_path):
    overrides = load_yaml(CONFIGS / dataset / "mcr.yaml")
    overrides["data.root"] = str(write_fixture(dataset, tmp_path / dataset))
    cfg = build_config("mcr", dataset, overrides, REGISTRY["mcr"].Hyperparameters)
    data = build_data(cfg)
    method = build_method(cfg, build_model(data, cfg))
    dims = method.model.feature_dims
    assert dims == ({"video": 40, "text": 40} if dataset in ("mosi", "mosei") else dict.fromkeys(data.shapes, 512))
