"""No module over 400 lines; the core imports without Lightning or Optuna (and how long it takes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "mmbalance"
MAX_LINES = 400


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_core_imports_without_lightning_or_optuna():
    code = ("import json, sys, time; t = time.perf_counter(); import mmbalance; "
            "dt = time.perf_counter() - t; import mmbalance.losses, mmbalance.models; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning', 'lightning_fabric', 'optuna')); "
            "print(json.dumps({'seconds': dt, 'heavy': heavy, 'file': mmbalance.__file__}))")
    env_path = str(PACKAGE.parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": env_path})
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"import mmbalance: {report['seconds']:.2f} s ({report['file']})")
    assert not report["heavy"], f"importing the core loaded {report['heavy'][:5]}"
