"""Import time: what a command does not need, it does not import. Checked in a
fresh interpreter, by the modules it holds, not by a clock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "torchmetrics", "optuna", "matplotlib")


def _loaded_after(code: str) -> set:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if '.' not in m)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_import_mmbalance_and_the_command_line_parser_load_no_heavy_package():
    loaded = _loaded_after("import mmbalance\nfrom mmbalance.cli import _parser\n_parser()")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_public_names_still_resolve_on_first_use():
    loaded = _loaded_after("import mmbalance as mb\nassert mb.MCRLoss.__name__ == 'MCRLoss'\n"
                           "from mmbalance import MultimodalModel, Batch, losses\nassert losses.MIPD is mb.MIPD")
    assert "torch" in loaded and "lightning" not in loaded   # the library API needs torch, not Lightning


def test_the_synthetic_generator_does_not_import_torchmetrics_or_lightning():
    loaded = _loaded_after("from mmbalance.data.synthetic import make_synthetic")
    assert not loaded & {"torchmetrics", "lightning", "matplotlib", "optuna"}


def test_subpackages_resolve_as_attributes_and_unknown_names_raise():
    import mmbalance as mb
    assert mb.models.Select.__name__ == "Select" and "mcr" in mb.methods.REGISTRY
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mb.nope


def test_the_demo_parent_with_workers_loads_no_lightning():
    """With workers, the demo's own process trains nothing: it must not spend Lightning's
    seconds of imports before its workers start (they import it themselves)."""
    loaded = _loaded_after("import mmbalance.demo\nfrom mmbalance.training import progress\n"
                           "from mmbalance.bench.runner import worker_pool\nprogress.emit('x')\n"
                           "import mmbalance.training as t\nassert 'train' in dir(t)")
    assert "torch" in loaded and not loaded & {"lightning", "torchmetrics"}, sorted(loaded & {"lightning"})


def test_the_loop_still_prints_its_epoch_lines_through_a_lightning_callback():
    loaded = _loaded_after("from mmbalance.training.epoch_lines import EpochLines\n"
                           "from lightning.pytorch.callbacks import Callback\n"
                           "from mmbalance.training import train\n"
                           "from mmbalance.training import run\n"
                           "assert issubclass(EpochLines, Callback) and run.EpochLines is EpochLines\n"
                           "assert train.__module__ == 'mmbalance.training.run'")
    assert "lightning" in loaded
