"""Setting (a) of bench speed: the cost of each MCR term alone, eager and fused by ``torch.compile``,
against the whole multiloss step, to show how low MCR's ratio to multiloss can go on this CPU.

For the ``bench speed --settings synthetic`` cells of ``mcr_p1`` and ``mcr_p32`` it takes the
model's output on the cell's batch, detaches the features and logits into leaves, and times
forward + backward of the MIPD term and of the supervised contrastive term alone (their
gradients reach those leaves and the fusion's weights, nothing upstream). ``compiled`` runs
each term under ``torch.compile`` (inductor fuses its elementwise work into a few loops), the
nearest thing measured here to the term's arithmetic alone. The reference is the whole
multiloss step (forward, loss, backward, foreach Adam), eager and compiled as in
``studies/step_variants.py``. A term's time over the multiloss step is the least it adds to
MCR's ratio, whatever else gets faster.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python studies/term_floor.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict

import torch


def term_steps(label: str) -> Dict[str, Callable[[], None]]:
    from mmbalance.bench.speed.cells import SETTINGS, make_runner, variant_by_label
    from mmbalance.types import ModelOutput
    runner = make_runner(SETTINGS["synthetic"], variant_by_label(label), torch.device("cpu"))
    method, batch = runner.method, runner.batch
    model, reg = method.model, method.regularizer
    with torch.no_grad():
        out = method(batch.inputs)

    def leaves() -> ModelOutput:
        return ModelOutput(out.logits.detach().requires_grad_(),
                           {m: v.detach().requires_grad_() for m, v in out.unimodal_logits.items()},
                           {m: v.detach().requires_grad_() for m, v in out.features.items()})

    def mipd(o: ModelOutput) -> torch.Tensor:
        return reg.mipd.divergences(model, o, batch.labels).sum()

    def contrastive(o: ModelOutput) -> torch.Tensor:
        return reg.contrastive(o.features, batch.labels)

    steps = {}
    for name, fn in (("mipd", mipd), ("contrastive", contrastive)):
        for variant, f in (("eager", fn), ("compiled", torch.compile(fn))):
            steps[f"{label} {name}", variant] = (lambda f=f: f(leaves()).backward())
    return steps


def _step_variants():
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location("step_variants", pathlib.Path(__file__).with_name("step_variants.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def multiloss_steps() -> Dict[tuple, Callable[[], None]]:
    return {("multiloss step", v): _step_variants().build_step("multiloss", {"eager": "foreach"}.get(v, v))
            for v in ("eager", "compiled")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=100, help="calls per timed block")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    steps = multiloss_steps()
    for label in ("mcr_p1", "mcr_p32"):
        steps.update(term_steps(label))
    for key, step in steps.items():
        began = time.perf_counter()
        for _ in range(5):
            step()
        print(f"{' '.join(key):30s} ready ({time.perf_counter() - began:.1f} s for the first 5 calls)", flush=True)
    times = _step_variants().interleaved_ms(steps, args.rounds, args.steps)
    base = {v: statistics.median(times["multiloss step", v]) for v in ("eager", "compiled")}
    print("\n| what | eager ms | compiled ms | eager / multiloss step (eager) | compiled / multiloss step (compiled) |")
    print("|---|---:|---:|---:|---:|")
    for name in dict.fromkeys(k[0] for k in steps):
        e, c = (statistics.median(times[name, v]) for v in ("eager", "compiled"))
        print(f"| {name} | {e:.3f} | {c:.3f} | {e / base['eager']:.2f} | {c / base['compiled']:.2f} |")
    print(f"\nmedian over {args.rounds} interleaved rounds of {args.steps} calls; one CPU thread; "
          "a term: forward + backward from detached features and logits")


if __name__ == "__main__":
    main()
