"""Extras: every third-party import in src/ is a core dependency or belongs to a declared
extra, every install hint names an extra that exists, the code that needs an optional
package names its extra, and the README lists every extra."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "mmbalance"
HINT = re.compile(r"mmbalance\[([\w,-]+)\]")

#: import name -> distribution, for the core dependencies
CORE = {"torch": "torch", "lightning": "lightning", "torchmetrics": "torchmetrics", "numpy": "numpy",
        "yaml": "pyyaml", "matplotlib": "matplotlib", "PIL": "pillow", "scipy": "scipy", "h5py": "h5py"}
#: imported, and installed by a dependency: Lightning requires tqdm; optuna (the tune extra),
#: SQLAlchemy (imported only by the tuning code)
TRANSITIVE = {"tqdm", "sqlalchemy"}
#: import name (or name looked up with find_spec / loaded by SQLAlchemy) -> (extra, distribution)
OPTIONAL = {"optuna": ("tune", "optuna"), "optuna_integration": ("tune", "optuna-integration"),
            "psycopg2": ("postgres", "psycopg2-binary"), "tensorboard": ("loggers", "tensorboard"),
            "transformers": ("pretrained", "transformers"), "submitit": ("slurm", "submitit")}


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements):
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def _imports(path: Path):
    """Top-level third-party module names a file imports, and the string constants it holds."""
    tree = ast.parse(path.read_text())
    modules, strings = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
    return {m for m in modules if m not in sys.stdlib_module_names and m != "mmbalance"}, strings


def test_every_third_party_import_is_core_or_in_its_extra():
    project = _project()
    core, extras = _names(project["dependencies"]), project["optional-dependencies"]
    assert set(CORE.values()) <= core
    for name, (extra, dist) in OPTIONAL.items():
        assert dist in _names(extras[extra]), f"{name} needs {dist} in the {extra} extra"
        assert dist not in core, f"{dist} is optional (the {extra} extra), not a core dependency"
    unknown = {}
    for path in PACKAGE.rglob("*.py"):
        for module in _imports(path)[0] - set(CORE) - TRANSITIVE - set(OPTIONAL):
            unknown.setdefault(module, []).append(str(path.relative_to(ROOT)))
    assert not unknown, f"imports that are neither core dependencies nor in an extra: {unknown}"


def test_code_that_needs_an_optional_package_names_its_extra():
    for path in PACKAGE.rglob("*.py"):
        modules, strings = _imports(path)
        text = path.read_text()
        for name, (extra, _) in OPTIONAL.items():
            if name in modules or name in strings:
                assert f"mmbalance[{extra}]" in text, f"{path.relative_to(ROOT)} uses {name}: its error must " \
                                                      f"say pip install 'mmbalance[{extra}]'"


def test_every_install_hint_names_a_declared_extra():
    extras = set(_project()["optional-dependencies"])
    files = [*PACKAGE.rglob("*.py"), ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), ROOT / "Makefile"]
    named = {(str(p.relative_to(ROOT)), e) for p in files for m in HINT.findall(p.read_text()) for e in m.split(",")}
    assert not {(p, e) for p, e in named if e not in extras}, f"undeclared extras: {named}"


def test_the_readme_lists_every_extra():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Extras"):]
    section = section[:section.index("\n#", 1)]
    listed = {e for m in HINT.findall(section) for e in m.split(",")}
    assert listed == set(_project()["optional-dependencies"])
