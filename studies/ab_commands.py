"""Wall time of one ``mmbalance`` command at two commits, alternating (A B A B ...).

This machine's speed drifts by tens of percent from minute to minute, so a before/after
figure is only meaningful from interleaved runs. Each round runs the command once with the
sources of ``--old`` (a git worktree of that commit) and once with this checkout's ``src``,
both with this checkout's ``.venv``, and prints the wall seconds and whether the two runs'
``summary.md`` files are identical. ``{out}`` in the command is replaced by a fresh folder.

    python studies/ab_commands.py --old 164205c --rounds 2 -- demo --out {out}
    python studies/ab_commands.py --old 164205c --rounds 2 -- bench synthetic --quick --out {out}
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the commit to compare with (a worktree is made of it)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the mmbalance arguments")
    args = parser.parse_args()
    command = [a for a in args.command if a != "--"]
    if "{out}" not in command:
        parser.error("the command needs an {out} folder")
    work = Path(tempfile.mkdtemp(prefix="ab_"))
    tree = work / "old"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), args.old], check=True)
    python = str(ROOT / ".venv" / "bin" / "python")
    try:
        for r in range(1, args.rounds + 1):
            summaries = {}
            for name, src in (("old", tree / "src"), ("new", ROOT / "src")):
                out = work / f"{name}{r}"
                argv = [python, "-m", "mmbalance.cli"] + [a.replace("{out}", str(out)) for a in command]
                began = time.perf_counter()
                subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(src)}, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                print(f"round {r} {name} ({args.old if name == 'old' else 'this checkout'}): "
                      f"{time.perf_counter() - began:.1f} s", flush=True)
                summary = out / "summary.md"
                summaries[name] = summary.read_text() if summary.exists() else None
            print(f"round {r}: summary.md {'identical' if summaries['old'] == summaries['new'] else 'DIFFERS'}",
                  flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
