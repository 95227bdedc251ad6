"""Setting (a) of bench speed: what the optimizer's update kernel and a whole-step ``torch.compile``
do to the step time of multiloss and MCR on the synthetic MLP (one CPU thread).

For each method (``bench speed`` labels) and each variant it builds the cell of
``mmbalance bench speed --settings synthetic`` (the same model, batch and method) and times
the training step in interleaved rounds after a warm-up, reporting the median ms per step
and the ratio to multiloss under the same variant:

- ``for_loop``, ``foreach``, ``fused``: the eager step (``engine.train_step``) with Adam
  built by ``optim.implementation=...`` (``foreach`` is the default);
- ``compiled``: the forward and the method's loss under one ``torch.compile`` (the
  backward then runs AOTAutograd's compiled graph), foreach Adam; it also prints the
  compile time of the first steps and the number of graph breaks.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python studies/step_variants.py \
        --methods multiloss mcr_p1 mcr_p32 --variants for_loop foreach fused compiled
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch


def build_step(label: str, variant: str) -> Callable[[], None]:
    from mmbalance.bench.speed.cells import SETTINGS, make_runner, variant_by_label
    from mmbalance.config import OptimConfig
    from mmbalance.engine.optim import build_optimizer
    from mmbalance.engine.step import train_step

    runner = make_runner(SETTINGS["synthetic"], variant_by_label(label), torch.device("cpu"))
    method, batch = runner.method, runner.batch
    implementation = "foreach" if variant == "compiled" else variant
    optimizer = build_optimizer(method.optimizer_groups(),
                                OptimConfig(name="adam", lr=1e-4, weight_decay=1e-4, implementation=implementation))
    if variant != "compiled":
        return lambda: train_step(method, batch, optimizer)

    def loss_of(inputs, labels):
        return method.training_loss(type(batch)(inputs, labels), method(inputs)).total

    compiled = torch.compile(loss_of)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        compiled(batch.inputs, batch.labels).backward()
        method.after_backward()
        optimizer.step()
    return step


def interleaved_ms(steps: Dict[tuple, Callable[[], None]], rounds: int, calls: int) -> Dict[tuple, List[float]]:
    """Each step's ms per call in each of ``rounds`` rounds; every round times ``calls``
    calls of every step in turn, so the machine's drift falls on all of them alike."""
    times: Dict[tuple, List[float]] = {key: [] for key in steps}
    for r in range(rounds):
        for key, step in steps.items():
            began = time.perf_counter()
            for _ in range(calls):
                step()
            times[key].append((time.perf_counter() - began) * 1e3 / calls)
        print(f"round {r + 1}/{rounds} done", flush=True)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["multiloss", "mcr_p1", "mcr_p32"])
    p.add_argument("--variants", nargs="+", default=["for_loop", "foreach", "fused", "compiled"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=100, help="steps per timed block")
    args = p.parse_args()
    torch.set_num_threads(1)
    steps: Dict[tuple, Callable[[], None]] = {}
    for variant in args.variants:
        for label in args.methods:
            if variant == "compiled":
                from torch._dynamo.utils import counters
                counters.clear()
            torch.manual_seed(0)
            steps[label, variant] = step = build_step(label, variant)
            began = time.perf_counter()
            for _ in range(5):
                step()
            note = f"{time.perf_counter() - began:.1f} s for the first 5 steps"
            if variant == "compiled":
                breaks = sum(counters["graph_break"].values())
                note += f", {breaks} graph break{'s' if breaks != 1 else ''}"
            print(f"{label:10s} {variant:9s} ready ({note})", flush=True)
    times = interleaved_ms(steps, args.rounds, args.steps)
    print(f"\n| method | {' | '.join(args.variants)} |")
    print("|---|" + "---:|" * len(args.variants))
    for label in args.methods:
        cells = []
        for variant in args.variants:
            ms = statistics.median(times[label, variant])
            base = statistics.median(times.get(("multiloss", variant), [float("nan")]))
            cells.append(f"{ms:.2f} ms ({ms / base:.2f}x)")
        print(f"| {label} | {' | '.join(cells)} |")
    print("\nmedian ms per step over the rounds; in brackets, the ratio to multiloss under the same variant")


if __name__ == "__main__":
    main()
