"""Peak memory of one benchmark cell in a fresh process, from a small fork server.

``python -m mmbalance.bench.speed_memory`` imports torch and the benchmark once (running no
torch operation), then for every request read from stdin (one JSON line: setting, variant,
device, precision, steps, threads) forks a child that builds the cell, runs the steps and
reports :func:`mmbalance.bench.speed.memory_worker`'s figures; the server prints one JSON
line per request. Each child is a new process whose memory starts from an interpreter that
has only imported torch and mmbalance, without paying the imports (seconds) per cell.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional


def _encode(setting, variant, device: str, precision: str, steps: int, threads: Optional[int]) -> str:
    return json.dumps({"setting": dataclasses.asdict(setting), "variant": dataclasses.asdict(variant),
                       "device": device, "precision": precision, "steps": steps, "threads": threads})


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _decode(line: str):
    from .speed import Setting, Variant
    req = json.loads(line)
    s = req["setting"]
    setting = Setting(s["name"], s["title"], _tuples(s["modalities"]), _tuples(s["model_cfg"]), s["num_classes"],
                      s["batch"])
    v = req["variant"]
    variant = Variant(v["label"], v["method"], _tuples(v["hparams"]), v["chunk_size"])
    return setting, variant, req["device"], req["precision"], req["steps"], req["threads"]


def _serve() -> None:  # pragma: no cover - runs in the server process
    import torch
    import torch.utils.checkpoint  # noqa: F401  (what chunked MIPD imports on first use)

    from . import speed  # imports torch and the models once, before any fork

    # Constructing an optimizer imports torch._dynamo (a second, 800 modules); do it here so
    # that every child starts from the same imports. No tensor computation runs here.
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])

    for line in sys.stdin:
        if not line.strip():
            continue
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                result = {"ok": speed.memory_worker(*_decode(line))}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write_fd, "w") as fh:
                fh.write(json.dumps(result))
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd) as fh:
            data = fh.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            data = json.dumps({"error": f"the measuring process died (wait status {status})"})
        sys.stdout.write(data + "\n")
        sys.stdout.flush()


class MemoryServer:
    """Client of the fork server (started on first use, stopped by :meth:`close`)."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None

    def _start(self) -> subprocess.Popen:
        import mmbalance
        root = str(Path(mmbalance.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return subprocess.Popen([sys.executable, "-m", "mmbalance.bench.speed_memory"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)

    def measure(self, setting, variant, device: str = "cpu", precision: str = "fp32", steps: int = 2,
                threads: Optional[int] = None) -> Dict[str, float]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        self.proc.stdin.write(_encode(setting, variant, device, precision, steps, threads) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"memory of {setting.name}/{variant.label}: the memory server exited "
                               f"(code {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"memory of {setting.name}/{variant.label}: {reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
            self.proc = None

    def __enter__(self) -> "MemoryServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":  # pragma: no cover
    _serve()
