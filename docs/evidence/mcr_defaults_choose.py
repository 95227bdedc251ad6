"""Step 3-4 of docs/evidence/mcr_defaults.md: score each mcr candidate on VALIDATION accuracy
only (mean over data sets of the mean over seeds of val(candidate) - val(joint), same seed)
and name the choice. Reads the results.csv of the two `bench compare` runs; prints no test
number.

    python docs/evidence/mcr_defaults_choose.py RESULTS_SYNTHETIC RESULTS_MFEAT
"""

import csv
import sys
from collections import defaultdict
from statistics import mean

DEFAULT = "mcr"  # today's defaults
MARGIN = 0.002  # a candidate must beat today's defaults by more than 0.2 points


def deltas(path):
    val = defaultdict(dict)
    for row in csv.DictReader(open(path)):
        val[row["method"]][int(row["seed"])] = float(row["val_accuracy"])
    joint = val.pop("joint")
    return {m: mean(v[s] - joint[s] for s in v) for m, v in val.items() if m.startswith("mcr")}


def main(paths):
    per_data = [deltas(p) for p in paths]
    score = {m: mean(d[m] for d in per_data) for m in per_data[0]}
    for m, s in sorted(score.items(), key=lambda kv: -kv[1]):
        parts = ", ".join(f"{100 * d[m]:+.2f}" for d in per_data)
        print(f"{m}: score {100 * s:+.2f} points (per data set: {parts})")
    best = max(score, key=score.get)
    choice = best if score[best] > score[DEFAULT] + MARGIN else DEFAULT
    print(f"choice: {choice}")


if __name__ == "__main__":
    main(sys.argv[1:])
