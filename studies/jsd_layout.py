"""The MIPD's JSD kernel (``jensen_shannon_rows``) on the CPU in its two layouts: classes as
the last axis, and classes as the first axis (used up to ``CLASSES_FIRST_MAX`` classes and
from ``CLASSES_FIRST_MIN_ROWS`` rows).

It times forward and backward of ``jensen_shannon_rows`` on (2 subsets, P, 64 rows, C)
perturbed logits against a (64, C) reference, interleaving the two layouts, and prints the
median microseconds per call and their ratio. One thread.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python studies/jsd_layout.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmbalance.losses import divergence


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, nargs="+", default=[2, 5, 8, 12, 16, 28, 51, 100])
    p.add_argument("--permutations", type=int, nargs="+", default=[1, 32, 128])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; median us per forward + backward over {args.rounds} rounds")
    print("\n| classes | P | classes last (us) | classes first (us) | first / last |")
    print("|---:|---:|---:|---:|---:|")
    for classes in args.classes:
        for perms in args.permutations:
            g = torch.Generator().manual_seed(0)
            a = torch.randn(2, perms, 64, classes, generator=g).requires_grad_(True)
            b = torch.randn(64, classes, generator=g).requires_grad_(True)
            times = {"last": [], "first": []}
            divergence.CLASSES_FIRST_MIN_ROWS = 0
            for r in range(args.rounds + 1):
                for layout, limit in (("last", 0), ("first", 10 ** 9)):
                    divergence.CLASSES_FIRST_MAX = limit
                    began = time.perf_counter()
                    for _ in range(args.calls):
                        divergence.jensen_shannon_rows(a, b).sum().backward()
                    if r:  # the first round warms up
                        times[layout].append((time.perf_counter() - began) * 1e6 / args.calls)
            last, first = statistics.median(times["last"]), statistics.median(times["first"])
            print(f"| {classes} | {perms} | {last:.0f} | {first:.0f} | {first / last:.2f} |", flush=True)


if __name__ == "__main__":
    main()
