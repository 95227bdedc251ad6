"""Bayes ceiling of the default generator at the sweep's U1/S grid (seed 0 and the mean of seeds 0-2)
against a table computed independently of this code (tests/data/test_bayes.py). Run: PYTHONPATH=src python studies/bayes_table.py"""
import numpy as np
from mmbalance.data.synthetic import SyntheticSpec
from mmbalance.data.bayes import bayes_accuracy
ref={(0.8,0.1):(75.0,60.5,58.5),(0.6,0.3):(70.3,60.5,49.9),(0.45,0.45):(67.4,60.5,43.4),(0.3,0.6):(64.9,60.5,37.1),(0.1,0.8):(62.3,60.5,28.4)}
print("| U1/S | reference (both, x1, x2) | seed 0 (both, x1, x2) ± MC s.e. | mean of seeds 0-2 (both, x1, x2) | max abs diff, seed 0 / mean |")
print("|---|---|---|---|---|")
for (s,u),r in ref.items():
    b=[bayes_accuracy(SyntheticSpec(shared=s,unique1=u,seed=k),draws=200_000) for k in (0,1,2)]
    v0=100*np.array(b[0][:3]); se0=100*np.array(b[0][3:6]); m=100*np.mean([x[:3] for x in b],0)
    f=lambda a:", ".join(f"{x:.2f}" for x in a)
    print(f"| {u/s:g} | {', '.join(map(str,r))} | {', '.join(f'{x:.2f} ± {e:.2f}' for x,e in zip(v0,se0))} | {f(m)} | {np.abs(v0-r).max():.2f} / {np.abs(m-r).max():.2f} |")
