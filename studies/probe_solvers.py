"""The final linear probe's solver (torch L-BFGS, 100 iterations) against scipy's L-BFGS-B on
the same problem: time and objective, on the features of finished runs.

For each run folder under ``RUNS`` (for example ``OUT/runs`` of ``mmbalance bench synthetic
--quick --out OUT``) it encodes the training split with the run's best model, fits each
modality's probe with :func:`mmbalance.training.probe.fit_linear_probe`, then minimizes the
same objective (mean cross-entropy of the standardized features + weight_decay * |W|^2) with
``scipy.optimize.minimize(method="L-BFGS-B")`` at ``--gtol``, and prints both times and
objectives and the largest parameter difference.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python studies/probe_solvers.py OUT/runs --limit 4 --gtol 1e-6
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path)
    p.add_argument("--limit", type=int, default=4, help="run folders, in name order")
    p.add_argument("--gtol", type=float, default=1e-6)
    p.add_argument("--weight-decay", type=float, default=1e-3, help="fit_linear_probe's default")
    args = p.parse_args()
    from mmbalance.analysis.runs import load_run
    from mmbalance.training import build_data
    from mmbalance.training.probe import encode_split, fit_linear_probe
    torch.set_num_threads(1)
    wd = args.weight_decay
    for run in sorted(d for d in args.runs.iterdir() if (d / "metrics.json").exists())[:args.limit]:
        trained = load_run(run)
        model = trained.method.model
        xs, y = encode_split(model, build_data(trained.cfg).train)
        for m, x in xs.items():
            began = time.perf_counter()
            probe = fit_linear_probe(x, y, model.num_classes, weight_decay=wd)
            t_torch = time.perf_counter() - began
            x = x.float()
            z = ((x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6)).double().numpy()
            c, d = model.num_classes, z.shape[1]
            onehot = np.eye(c)[y.numpy()]

            def objective(theta):
                w, b = theta[:c * d].reshape(c, d), theta[c * d:]
                a = z @ w.T + b
                a -= a.max(1, keepdims=True)
                e = np.exp(a)
                prob = e / e.sum(1, keepdims=True)
                g = (prob - onehot) / len(z)
                loss = -np.log(prob[onehot > 0]).mean() + wd * (w ** 2).sum()
                return loss, np.concatenate([(g.T @ z + 2 * wd * w).ravel(), g.sum(0)])

            began = time.perf_counter()
            res = scipy.optimize.minimize(objective, np.zeros(c * d + c), jac=True, method="L-BFGS-B",
                                          options={"maxiter": 5000, "gtol": args.gtol, "ftol": 1e-14})
            t_scipy = time.perf_counter() - began
            ours = np.concatenate([probe.weight.double().numpy().ravel(), probe.bias.double().numpy()])
            print(f"{run.name[:30]:30s} {m}: torch {t_torch * 1e3:6.1f} ms, objective {objective(ours)[0]:.8f} | "
                  f"scipy {t_scipy * 1e3:6.1f} ms, objective {res.fun:.8f}, {res.nit} iterations | "
                  f"max |difference| {np.abs(ours - res.x).max():.1e}", flush=True)


if __name__ == "__main__":
    main()
