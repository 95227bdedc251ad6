"""Every place the package opens a file format that can carry code goes through a safe reader:
``torch.load`` weights-only, ``np.load`` without pickles, ``pickle`` only inside the restricted
unpickler, YAML through ``safe_load``. A source scan, so a new reader cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "mmbalance"


def _calls():
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path.relative_to(SRC).as_posix(), node


def _name(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, key: str):
    for kw in node.keywords:
        if kw.arg == key and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return "missing"


def test_torch_load_is_weights_only_everywhere():
    found = [(p, n) for p, n in _calls() if _name(n.func) == "torch.load"]
    assert found, "the scan found no torch.load at all: it is not looking where it should"
    assert [(p, n.lineno) for p, n in found if _keyword(n, "weights_only") is not True] == []


def test_np_load_never_allows_pickles():
    found = [(p, n) for p, n in _calls() if _name(n.func) in ("np.load", "numpy.load")]
    assert found
    assert [(p, n.lineno) for p, n in found if _keyword(n, "allow_pickle") is not False] == []


def test_pickle_is_unpickled_only_by_the_restricted_unpickler():
    used = sorted({p for p, n in _calls() if _name(n.func) in ("pickle.load", "pickle.loads", "pickle.Unpickler")})
    assert used == [], used  # data/safe_pickle.py subclasses pickle.Unpickler; nothing calls these


def test_yaml_is_read_with_safe_load_only():
    assert [(p, n.lineno) for p, n in _calls() if _name(n.func) in ("yaml.load", "yaml.unsafe_load", "yaml.full_load")] == []
