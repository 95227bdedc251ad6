"""A plain install, as a new user gets it: a fresh venv with only the declared dependencies
(no extras, pinned by constraints.txt), every module importable, a WAV-reading loader
working, and ``tune`` naming its extra. The test extra pulls optuna, tensorboard and
transformers into the development venv, so an undeclared import would pass every other
test; this one builds the venv itself.

Slow (a venv and a pip install, about a minute): ``make test-install``, which CI runs after
``make test``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import importlib, importlib.util, pkgutil, sys
    from pathlib import Path

    import mmbalance
    assert "site-packages" in mmbalance.__file__, mmbalance.__file__  # the install, not the checkout
    for extra in ("transformers", "pytest", "hypothesis", "tensorboard", "optuna", "optuna_integration", "psycopg2"):
        assert importlib.util.find_spec(extra) is None, f"{extra} is installed without an extra"
    names = [m.name for m in pkgutil.walk_packages(mmbalance.__path__, "mmbalance.")]
    for name in names:
        if name.endswith(".__main__"):  # runs the CLI when imported: found, not run
            assert importlib.util.find_spec(name) is not None
            continue
        importlib.import_module(name)
    print("imported", len(names) + 1, "modules")

    from mmbalance.config import DataConfig
    from mmbalance.data import DATASETS
    from mmbalance.testing.fixtures import write_cremad
    root = Path(sys.argv[1])
    write_cremad(root)
    bundle = DATASETS["cremad"](DataConfig(root=str(root), image_size=16))
    x, y = bundle.test[0]
    assert tuple(x["audio"].shape) == (257, 188) and tuple(x["video"].shape) == (3, 3, 16, 16), x
    assert float(x["audio"].std()) > 0  # the WAV was read (scipy resampling), not zero-filled
    print("cremad ok", len(bundle.train), len(bundle.val), len(bundle.test))

    from mmbalance.bench.tune import tune
    from mmbalance.errors import ConfigError
    try:
        tune("joint", "synthetic", {}, 1, root / "tune")
    except ConfigError as exc:  # one line naming the extra, no traceback in the CLI
        assert "pip install 'mmbalance[tune]'" in str(exc), exc
        print("tune needs the extra")
""")


def test_plain_install_imports_every_module_and_reads_wav(tmp_path):
    source = tmp_path / "source"  # a copy: an in-tree build would leave build/ and *.egg-info behind
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(source / "constraints.txt"),
                              str(source)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    (tmp_path / "check.py").write_text(CHECK)
    run = subprocess.run([str(python), str(tmp_path / "check.py"), str(tmp_path / "cremad")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "cremad ok 11 1 6" in run.stdout and "tune needs the extra" in run.stdout
    cli = subprocess.run([str(venv / "bin" / "mmbalance"), "--help"], capture_output=True, text=True)
    assert cli.returncode == 0 and "train" in cli.stdout, cli.stderr
