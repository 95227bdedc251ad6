"""Every checked-in ``configs/<dataset>/<method>.yaml`` holds exactly the settings of
``configs/authors_settings.csv`` (the authors' per-dataset settings, with the source of each),
loaded through the real config loader, and every key carries a source comment."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from mmbalance.config import build_config, load_yaml
from mmbalance.methods import REGISTRY

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DATASETS = ("cremad", "ave", "ucf51", "mosi", "mosei", "sthsth")
TABLE = CONFIGS / "authors_settings.csv"
# Keys every method is to take (method.init and its learning-rate scale); until they exist the
# loader rejects them, so they are checked against the table but not built.
PENDING = {"method.init", "method.encoder_lr_scale"}


def _table():
    rows = defaultdict(dict)
    with TABLE.open(newline="") as f:
        for row in csv.DictReader(f):
            assert row["source"].strip(), row
            assert (row["key"] not in rows[(row["dataset"], row["method"])]), f"duplicate row {row}"
            rows[(row["dataset"], row["method"])][row["key"]] = (yaml.safe_load(row["value"]), row["source"])
    return rows


ROWS = _table()
PATHS = sorted(p for d in DATASETS for pattern in ("*.yaml", "*/*.yaml") for p in (CONFIGS / d).glob(pattern))


def _folder(p):
    """The table's dataset column: the folder under configs/ (``sthsth/swin`` for a backbone's subfolder)."""
    return p.parent.relative_to(CONFIGS).as_posix()


def _id(p):
    return f"{_folder(p)}/{p.stem}"


def test_the_table_covers_every_config():
    assert set(ROWS) == {(_folder(p), p.stem) for p in PATHS}


@pytest.mark.parametrize("path", PATHS, ids=_id)
def test_values_match_the_table(path):
    want = {k: v for k, (v, _) in ROWS[(_folder(path), path.stem)].items()}
    got = load_yaml(path)
    assert got == want
    method = path.stem
    buildable = {k: v for k, v in got.items() if not (k in PENDING and k.split(".", 1)[1] not in _fields(method))}
    cfg = build_config(method, _folder(path).split("/")[0], buildable, REGISTRY[method].Hyperparameters)
    typed = cfg.to_dict()
    for key, value in buildable.items():
        section, name = key.split(".", 1)
        assert typed[section][name] == value, key


def _fields(method):
    import dataclasses
    return {f.name for f in dataclasses.fields(REGISTRY[method].Hyperparameters)}


@pytest.mark.parametrize("path", PATHS, ids=_id)
def test_every_key_carries_its_source(path):
    table = ROWS[(_folder(path), path.stem)]
    section = None
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        top = re.match(r"^([a-z_]+):\s*$", line)
        if top:
            section = top.group(1)
            continue
        key = re.match(r"^  ([a-z_0-9]+):\s*(.*?)\s+#\s+(.+)$", line)  # (weight1: digits too)
        assert key, f"{path}: no source comment on {line!r}"
        name, _, comment = key.groups()
        assert comment == table[f"{section}.{name}"][1], f"{path}: {section}.{name}"


def test_a_changed_value_fails(tmp_path):
    path = CONFIGS / "cremad" / "ogm.yaml"
    changed = tmp_path / "cremad" / "ogm.yaml"
    changed.parent.mkdir()
    changed.write_text(path.read_text().replace("alpha: 1.0", "alpha: 0.8"))
    want = {k: v for k, (v, _) in ROWS[("cremad", "ogm")].items()}
    assert load_yaml(path) == want and load_yaml(changed) != want


@pytest.mark.parametrize("dataset, method, key, value", [
    ("cremad", "ogm", "method.alpha", 1.0), ("cremad", "agm", "method.alpha", 3.0),
    ("cremad", "unipre_finetuned", "optim.lr", 1e-4), ("cremad", "unipre_frozen", "optim.lr", 1e-4),
    ("cremad", "mcr", "optim.lr", 1e-4),
    ("ave", "joint", "optim.lr", 1e-3), ("ave", "agm", "optim.lr", 1e-4), ("ave", "ogm", "method.alpha", 0.6),
    ("ave", "agm", "method.alpha", 3.0), ("ave", "mslr", "method.init_scales", [0.7, 1.3]),
    ("ave", "mmcosine", "method.scale", 1.0),
    ("ucf51", "joint", "optim.lr", 1e-3), ("ucf51", "unipre_finetuned", "optim.lr", 1e-4),
    ("ucf51", "agm", "method.alpha", 2.0),
    ("mosei", "agm", "method.alpha", 0.5), ("mosei", "mlb", "method.alpha", 2.5),
    ("mosi", "agm", "method.alpha", 1.5), ("mosi", "mlb", "method.alpha", 1.5),
    ("sthsth", "mlb", "method.alpha", 2.0), ("sthsth", "mlb", "method.beta", 0.5), ("sthsth", "mcr", "optim.lr", 1e-5),
    ("sthsth/swin", "mcr", "optim.lr", 1e-5), ("sthsth/swin", "mcr", "method.num_permutations", 16),
    ("sthsth/swin", "mcr", "method.ceb_weight", 1.0), ("sthsth/swin", "joint", "model.encoder", "swin3d"),
    ("mosi", "joint", "model.regression_loss", "l1"), ("mosei", "mcr", "model.regression_loss", "l1"),
    ("cremad", "ogm", "method.end_epoch", None), ("cremad", "agm", "method.end_epoch", None),
    ("cremad", "pmr", "method.momentum", 0.0), ("cremad", "pmr", "method.alpha", 2.0),
    ("ucf51", "mmpareto", "method.gamma", 3.0), ("ucf51", "mmpareto", "optim.lr", 1e-3),
    ("ucf51", "dnr", "method.move_lambda", 5.0), ("ucf51", "dnr", "method.reinit_num", 3),
    ("mosi", "mmpareto", "method.gamma", 1.0), ("mosei", "mmpareto", "method.gamma", 3.0),
    ("mosi", "mmpareto", "optim.lr", 1e-4), ("sthsth", "mmpareto", "method.gamma", 3.0),
    ("sthsth", "dnr", "method.move_lambda", 3.0), ("sthsth", "dnr", "optim.lr", 1e-4),
    ("cremad", "dnr", "method.reinit_epoch", 20), ("sthsth", "dnr", "method.reinit_epoch", 20),
])
def test_the_authors_departures_are_in_the_configs(dataset, method, key, value):
    assert load_yaml(CONFIGS / dataset / f"{method}.yaml")[key] == value
