"""The code a reader copies works (issue 15.2): every Python block of the README and of
docs/*.md runs, and so do the examples."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, code in enumerate(BLOCK.findall(path.read_text())):
            yield pytest.param(code, id=f"{path.name}-{i}")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.mark.parametrize("code", list(_blocks()))
def test_python_blocks_run(code, tmp_path):
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_example_own_loop_learns():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import mcr_own_loop
    finally:
        sys.path.pop(0)
    assert mcr_own_loop.main(epochs=3) > 0.6  # 4 classes (chance 0.25); measured 0.94 after 5 epochs


def test_example_npz_from_the_cli(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "examples" / "npz_from_the_cli.sh"), str(tmp_path)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["accuracy"]
    assert accuracy > 0.6  # 3 classes (chance 0.33); measured 0.87
    assert (tmp_path / "diagnosis" / "diagnosis.md").exists()
