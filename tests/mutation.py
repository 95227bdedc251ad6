"""``make mutation``: mutmut on one module at a time, with the fast tests that cover it.

Each module runs in its own directory ``.mutation/<module>/`` (a copy of src/, tests/ and
pyproject.toml plus a generated setup.cfg), so runs do not share mutmut's state and each
one sees only its own tests. Prints mutmut's per-module counts; ``mutmut results`` in the
directory lists the survivors and ``mutmut show NAME`` shows one.

Usage: python tests/mutation.py [-j N] [losses] [methods] [arrays] [rundir]
(``-j N``: N mutmut worker processes, default the CPU count; ``MUTATION_JOBS`` sets it too.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module -> (files to mutate, fast tests that cover them)
MODULES = {
    "losses": (["src/mmbalance/losses/*"],
               # MIPD._chunked (the chunk_size path) is driven only by the bench tests: without
               # these two, mutmut rightly finds no test for its mutants
               ["tests/losses", "tests/bench/test_speed.py::test_chunked_mipd_equals_one_pass",
                "tests/bench/test_speed.py::test_chunked_regression_and_nonlinear_fusion_match",
                "tests/bench/test_speed.py::test_chunk_size_is_validated"]),
    "methods": (["src/mmbalance/methods/*"],
                # the fast method tests; test_init.py and test_pipelines.py train stage models for
                # minutes per run and are left out, except test_init.py's two that train nothing;
                # the two search-space tests of tests/bench/test_tune.py drive Search/search_space
                ["tests/methods/test_agm.py", "tests/methods/test_contract.py", "tests/methods/test_method_details.py",
                 "tests/methods/test_machinery.py", "tests/methods/test_mlb.py",
                 "tests/methods/test_mmcosine.py", "tests/methods/test_mslr.py", "tests/methods/test_ogm.py",
                 "tests/methods/test_ogm_ge.py", "tests/methods/test_pmr.py",
                 "tests/methods/test_regression_loss.py",
                 "tests/methods/test_init.py::test_every_method_has_init_and_the_defaults_say_how_it_starts",
                 "tests/methods/test_init.py::test_impossible_init_is_one_clear_error",
                 "tests/bench/test_tune.py::test_every_search_space_gives_valid_overrides",
                 "tests/bench/test_tune.py::test_declared_spaces"]),
    "arrays": (["src/mmbalance/data/arrays.py"],
               ["tests/data/test_user_arrays.py", "tests/data/test_arrays_contract.py"]),
    # test_run.py and test_interrupt.py's SIGKILL tests train whole runs (tens of seconds to
    # minutes each, and most rundir mutants reach all of them): only their fast atomic-write tests
    "rundir": (["src/mmbalance/engine/rundir.py"],
               ["tests/engine/test_rundir.py", "tests/training/test_interrupt.py::test_checkpoint_write_is_atomic",
                "tests/training/test_interrupt.py::test_metrics_write_is_atomic"]),
}


def prepare(name: str) -> Path:
    mutate, tests = MODULES[name]
    work = ROOT / ".mutation" / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".hypothesis")
    shutil.copytree(ROOT / "src", work / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    lines = ["[mutmut]", "source_paths=src", "only_mutate=" + "\n    ".join(mutate),
             "also_copy=tests\n    pyproject.toml",
             "pytest_add_cli_args_test_selection=" + "\n    ".join(tests),
             "pytest_add_cli_args=-p\n    no:cacheprovider\n    -x", ""]
    (work / "setup.cfg").write_text("\n".join(lines))
    return work


def main(names, jobs: int) -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    mutmut = str(mutmut) if mutmut.exists() else "mutmut"
    summary = {}
    for name in names or list(MODULES):
        work = prepare(name)
        # the mutated copy must be what the tests import, never this checkout's src/
        keep = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                if p and Path(p).resolve() != (ROOT / "src").resolve()]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(keep))
        print(f"== mutmut: {name} in {work}", flush=True)
        subprocess.run([mutmut, "run", "--max-children", str(jobs)], cwd=work, env=env)
        stats = work / "mutants" / "mutmut-cicd-stats.json"
        subprocess.run([mutmut, "export-cicd-stats"], cwd=work, env=env, capture_output=True)
        if stats.exists():
            summary[name] = json.loads(stats.read_text())
            print(name, summary[name], flush=True)
    out = ROOT / ".mutation" / "summary.json"  # modules run before, alone, keep their counts
    earlier = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**earlier, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(MODULES) + " (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", os.cpu_count() or 2)))
    args = parser.parse_args()
    if set(args.modules) - set(MODULES):
        parser.error(f"unknown module(s) {sorted(set(args.modules) - set(MODULES))}; valid: {', '.join(MODULES)}")
    sys.exit(main(args.modules, args.jobs))
