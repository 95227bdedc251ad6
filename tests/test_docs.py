"""The code a reader copies works: the README runs as written, block after block in one fresh
folder (its shell lines through ``mmbalance.cli.main`` in one process, so Lightning is imported
once), every Python block of docs/*.md runs, and so do the examples. A README block that cannot
run here says why in a ``<!-- docs-test: not run: REASON -->`` line right above it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks():
    for path in sorted((ROOT / "docs").glob("*.md")):
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


README = ROOT / "README.md"
FENCE = re.compile(r"(?:<!-- docs-test: not run: (?P<why>.+?) -->\n)?```(?P<lang>[a-z]*)\n(?P<code>.*?)```", re.S)
#: at most this many README blocks may skip the run, each with its reason
MAX_NOT_RUN = 2


def readme_blocks():
    """``(lang, code, reason)`` of every fenced block of the README, in order; reason is None
    for a block that runs."""
    return [(m["lang"], m["code"], m["why"]) for m in FENCE.finditer(README.read_text())]


def shell_commands(code: str):
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    return [words for line in code.replace("\\\n", " ").splitlines() if (words := shlex.split(line, comments=True))]


def test_every_readme_block_runs_or_says_why_not():
    blocks = readme_blocks()
    assert len(blocks) >= 4, "the README's fences were not found"
    skipped = [code for _, code, why in blocks if why is not None]
    assert len(skipped) <= MAX_NOT_RUN, f"keep the README's not-run blocks few: {skipped}"
    for lang, code, why in blocks:
        assert why is not None or lang in ("python", "bash"), f"a README block the test cannot run:\n{code}"
        if lang == "bash" and why is None:
            for words in shell_commands(code):
                assert words[0] == "mmbalance", f"a README shell line that is not an mmbalance command: {words}"


def test_the_quick_start_is_make_demo_and_make_test_and_ci_runs_make_test():
    quick = [shell_commands(code) for _, code, why in readme_blocks() if why is not None and "make" in code]
    assert quick == [[["make", "demo"], ["make", "test"]]], quick
    makefile = (ROOT / "Makefile").read_text()
    recipes = {m[1]: m[2] for m in re.finditer(r"^([a-z-]+):[^\n]*\n((?:\t[^\n]*\n|#[^\n]*\n)*)", makefile, re.M)}
    assert "install" in makefile.split("demo:")[1].splitlines()[0], "make demo must install first"
    assert "mmbalance demo" in recipes["demo"]
    assert "install-test" in makefile.split("\ntest:")[1].splitlines()[0], "make test must install first"
    assert "pytest" in recipes["test"]
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci, ".ci/run must run the README's test command"


RUNNER = """
import shlex, sys
from mmbalance.cli import main
for i, (lang, code) in enumerate(BLOCKS):
    print(f"--- README block {i} ({lang})", flush=True)
    if lang == "python":
        exec(compile(code, f"<README block {i}>", "exec"), {"__name__": "__main__"})
        continue
    for words in COMMANDS[i]:
        print("$", shlex.join(words), flush=True)
        if words[0] != "mmbalance":
            sys.exit(f"README block {i}: {shlex.join(words)} is not an mmbalance command")
        rc = main(words[1:])
        if rc:
            sys.exit(f"README block {i}: {shlex.join(words)} exited with {rc}")
"""


def test_the_readme_runs_as_written(tmp_path):
    blocks = [(lang, code) for lang, code, why in readme_blocks() if why is None]
    commands = [shell_commands(code) if lang == "bash" else [] for lang, code in blocks]
    script = f"BLOCKS = {blocks!r}\nCOMMANDS = {commands!r}\n{RUNNER}"
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    # the files the README says each command writes
    assert json.loads((tmp_path / "runs" / "mcr" / "metrics.json").read_text())["method"] == "mcr"
    assert (tmp_path / "runs" / "mcr-diagnosis" / "diagnosis.md").exists()
    assert (tmp_path / "runs" / "compare" / "summary.md").exists()
    mine = json.loads((tmp_path / "runs" / "mine" / "metrics.json").read_text())
    assert mine["test"]["accuracy"] > 0.5  # 3 classes (chance 0.33), a planted signal
    import numpy as np
    with np.load(tmp_path / "preds.npz") as preds:
        assert preds["logits"].shape == (600, 3)
    assert "mipd_weight: 0.2" in done.stdout  # --print-config printed the --set value


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_readme_and_docs_finds_its_file_and_heading():
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path = (page.parent / target) if target else page
            if not path.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and path.suffix == ".md":
                text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
                if anchor not in {_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}:
                    broken.append(f"{page.name}: {target}#{anchor}")
    assert not broken, broken
