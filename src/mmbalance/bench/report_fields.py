"""The sections of ``summary.md`` with the field's other numbers (:mod:`mmbalance.bench.scores`):
macro-F1, accuracy on each synthetic point type, the unique-information deficit on unique2
points against the unimodal x2 model, the modalities' Shapley values and training time.

Each value is per run in ``results.csv``; a table cell is the mean ± 95% Student-t CI over
seeds (:mod:`mmbalance.bench.stats`), a paired one over the seeds both methods have.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .stats import Interval, format_ci, mean_ci, paired_difference

KINDS = ("shared", "unique1", "unique2", "none")
#: the reference of the unique-information deficit: the model trained on x2 alone
UNIQUE2_REFERENCE = "unimodal-x2"
#: Shapley removals, in the order the tables show them
REMOVALS = ("zero", "permute")

Fields = Dict[str, Dict[str, Dict[Any, Dict[int, Any]]]]  # field -> method -> cell -> seed -> value


def fields_from_rows(rows: Sequence[Mapping[str, str]], cell_of: Callable[[Mapping[str, str]], Any]) -> Fields:
    """``macro_f1``, ``train_seconds`` (floats), ``kind_accuracy`` and ``shapley`` (parsed
    JSON) of every row that has them."""
    out: Fields = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in rows:
        cell, seed = cell_of(r), int(r["seed"])
        for key in ("macro_f1", "train_seconds"):
            if r.get(key) not in (None, ""):
                out[key][r["method"]][cell][seed] = float(r[key])
        for key in ("kind_accuracy", "shapley"):
            if r.get(key):
                out[key][r["method"]][cell][seed] = json.loads(r[key])
    return out


def _iv(values: List[float]) -> Optional[Interval]:
    return mean_ci(values) if values else None


def _fmt(iv: Optional[Interval], scale: float = 100.0, digits: int = 2) -> str:
    return "—" if iv is None else format_ci(iv, scale, digits)


def _seed_values(fields: Fields, key: str, method: str, cell, get: Callable[[Any], Optional[float]]) -> Dict[int, float]:
    per = fields.get(key, {}).get(method, {}).get(cell, {})
    return {s: v for s, raw in per.items() if (v := get(raw)) is not None}


def _grid(methods: Sequence[str], columns: Sequence[str], cell_text: Callable[[str, int], str]) -> List[str]:
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cell_text(m, j) for j in range(len(columns))) + " |")
    return lines


def field_sections(fields: Fields, methods: Sequence[str], cells: Sequence, heads: Sequence[str]) -> List[str]:
    """The markdown lines of the five sections (a section without data is left out)."""
    lines: List[str] = []
    if fields.get("macro_f1"):
        lines += ["## Test macro-F1 (%), mean ± 95% CI over seeds", "",
                  "Per-class F1 on the test split, unweighted mean (BalanceBenchmark's second performance number).",
                  ""]
        lines += _grid(methods, heads, lambda m, j: _fmt(_iv(list(_seed_values(
            fields, "macro_f1", m, cells[j], float).values()))))
        lines += [""]
    if fields.get("kind_accuracy"):
        lines += _kind_sections(fields, methods, cells, heads)
    if fields.get("shapley"):
        lines += _shapley_section(fields, methods, cells, heads)
    if fields.get("train_seconds"):
        lines += ["## Training time (s), mean ± 95% CI over seeds", "",
                  "`train_seconds` of each run (its unimodal stages included; a stage taken from the cache counts "
                  "the seconds it took when it was trained).", ""]
        lines += _grid(methods, heads, lambda m, j: _fmt(_iv(list(_seed_values(
            fields, "train_seconds", m, cells[j], float).values())), 1.0, 1))
        lines += [""]
    return lines


def _kind_sections(fields: Fields, methods, cells, heads) -> List[str]:
    cols = [(c, k) for c in cells for k in KINDS]
    names = [f"{h}: {k}" for h in heads for k in KINDS]
    lines = ["## Test accuracy on each point type (%), mean ± 95% CI over seeds", "",
             "shared: both modalities carry the label; unique1 / unique2: only x1 / x2 does; none: neither.", ""]
    lines += _grid(methods, names, lambda m, j: _fmt(_iv(list(_seed_values(
        fields, "kind_accuracy", m, cols[j][0], lambda d, k=cols[j][1]: d.get(k)).values()))))
    lines += ["", f"## Unique-information deficit on unique2 points (percentage points), paired by seed", "",
              f"Accuracy of `{UNIQUE2_REFERENCE}` (trained on x2 alone) on the test points of kind unique2, "
              "minus the method's accuracy on the same points, mean ± 95% CI; `*`: the CI excludes 0. Positive: "
              "the method uses less of x2's own information than x2 alone does (competition at the fusion).", ""]
    ref_row = [_fmt(_iv(list(_seed_values(fields, "kind_accuracy", UNIQUE2_REFERENCE, c,
                                          lambda d: d.get("unique2")).values()))) for c in cells]
    lines += _grid([], heads, lambda m, j: "")
    lines.append(f"| *{UNIQUE2_REFERENCE} on unique2* | " + " | ".join(ref_row) + " |")
    for m in methods:
        if m == UNIQUE2_REFERENCE:
            continue
        lines.append(f"| {m} | " + " | ".join(unique2_deficit_text(fields, m, c) for c in cells) + " |")
    return lines + [""]


def unique2_deficit(fields: Fields, method: str, cell) -> Optional[Any]:
    """``unimodal-x2``'s unique2 accuracy minus ``method``'s, paired by seed (a
    :class:`~mmbalance.bench.stats.PairedDifference`), or None without common seeds."""
    get = lambda d: d.get("unique2")  # noqa: E731
    ref = _seed_values(fields, "kind_accuracy", UNIQUE2_REFERENCE, cell, get)
    mine = _seed_values(fields, "kind_accuracy", method, cell, get)
    common = sorted(set(ref) & set(mine))
    if not common:
        return None
    return paired_difference([ref[s] for s in common], [mine[s] for s in common])


def unique2_deficit_text(fields: Fields, method: str, cell) -> str:
    d = unique2_deficit(fields, method, cell)
    if d is None:
        return "—"
    text = format_ci(d.interval, 100.0)
    return ("+" if d.interval.mean >= 0 else "") + text + (" *" if d.significant else "")


def _shapley_section(fields: Fields, methods, cells, heads) -> List[str]:
    mods: List[str] = []
    for per in fields["shapley"].values():
        for seeds in per.values():
            for d in seeds.values():
                for how in d.values():
                    mods += [m for m in how if m not in mods]
    cols = [(c, how, m) for c in cells for how in REMOVALS for m in mods]
    names = [f"{h}: {how} {m}" for h in heads for how in REMOVALS for m in mods]
    lines = ["## Modality Shapley values (test accuracy points), mean ± 95% CI over seeds", "",
             "phi_m = sum over coalitions S without m of |S|!(M-|S|-1)!/M! (v(S+m) - v(S)), v(S) = test accuracy "
             "with the modalities outside S removed through `forward_dropped` (BalanceBenchmark's imbalance "
             "metric; v of the empty coalition is not forced to 0). `zero`: their encoder features zeroed; "
             "`permute`: their inputs permuted across the test rows (one seeded permutation). The values sum "
             "to v(all) - v(none); a large difference between the modalities is an imbalance.", ""]
    lines += _grid(methods, names, lambda meth, j: _fmt(_iv(list(_seed_values(
        fields, "shapley", meth, cols[j][0], lambda d, how=cols[j][1], mod=cols[j][2]: d.get(how, {}).get(mod)
    ).values()))))
    return lines + [""]
