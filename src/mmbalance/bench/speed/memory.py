"""Peak memory of one benchmark cell in a fresh process, from a small fork server.

``python -m mmbalance.bench.speed.memory`` imports torch and the benchmark once (running no
torch operation), then for every request read from stdin (one JSON line: setting, variant,
device, precision, steps, threads) forks a child that builds the cell, runs the steps and
reports :func:`memory_worker`'s figures; the server prints one JSON
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

import torch
import torch.utils.checkpoint  # noqa: F401  (what chunked MIPD imports on first use)

from .cells import Runner, Setting, SpeedVariant, make_runner

def _rss_mb(field_name: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def memory_worker(setting: Setting, variant: SpeedVariant, device: str, precision: str, steps: int,
                  threads: Optional[int] = None) -> Dict[str, float]:
    """In a fresh process: builds the cell, runs ``steps`` steps and reports memory (MB).

    CPU: ``peak`` is the process's peak resident set (``VmHWM``: interpreter, torch,
    weights, optimizer state and the steps' activations), ``base`` the resident set after
    building model, method, optimizer and batch. CUDA: ``torch.cuda.max_memory_allocated``
    and the allocation before the first step."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    runner = make_runner(setting, variant, dev, precision)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base = _rss_mb("VmRSS")
    for _ in range(steps):
        runner.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = _rss_mb("VmHWM")  # this process's own high-water mark of resident memory
    return {"peak_mb": peak, "base_mb": base, "saved_mb": saved_for_backward_mb(runner)}


def saved_for_backward_mb(runner: Runner) -> float:
    """MB of the distinct tensors (parameters excluded) that one step's forward and loss
    save for backward: the activations held at the start of backward. Exact and free of
    allocator noise; a checkpointed chunk's tensors are recomputed, not saved, so they do
    not count (one chunk's worth is alive at a time during backward)."""
    params = {p.untyped_storage().data_ptr() for p in runner.method.parameters()}
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    runner.optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), runner.autocast():
        out = runner.method(runner.batch.inputs)
        loss = runner.method.training_loss(runner.batch, out)
    loss.total.backward()
    runner.optimizer.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def measure_memory(setting: Setting, variant: SpeedVariant, device: str = "cpu", precision: str = "fp32",
                   steps: int = 2, threads: Optional[int] = None, server=None) -> Dict[str, float]:
    """Peak memory of one cell in a fresh process (see :func:`memory_worker`), forked by
    ``server`` (a :class:`MemoryServer`; one is started and stopped here when None)."""
    if server is None:
        with MemoryServer() as own:
            return own.measure(setting, variant, device, precision, steps, threads)
    return server.measure(setting, variant, device, precision, steps, threads)


def _encode(setting, variant, device: str, precision: str, steps: int, threads: Optional[int]) -> str:
    return json.dumps({"setting": dataclasses.asdict(setting), "variant": dataclasses.asdict(variant),
                       "device": device, "precision": precision, "steps": steps, "threads": threads})


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _decode(line: str):
    req = json.loads(line)
    s = req["setting"]
    setting = Setting(s["name"], s["title"], _tuples(s["modalities"]), _tuples(s["model_cfg"]), s["num_classes"],
                      s["batch"])
    v = req["variant"]
    variant = SpeedVariant(v["label"], v["method"], _tuples(v["hparams"]), v["chunk_size"], v["epoch"])
    return setting, variant, req["device"], req["precision"], req["steps"], req["threads"]


def _serve() -> None:  # pragma: no cover - runs in the server process
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
                result = {"ok": memory_worker(*_decode(line))}
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
        root = str(Path(__file__).resolve().parents[3])  # the folder holding the mmbalance package
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return subprocess.Popen([sys.executable, "-m", "mmbalance.bench.speed.memory"], stdin=subprocess.PIPE,
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
