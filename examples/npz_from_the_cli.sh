#!/usr/bin/env bash
# A user's .npz, end to end from the command line: write a small two-modality file with a
# planted signal, train MCR on it, diagnose which modality the model uses.
#     bash examples/npz_from_the_cli.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/example_npz}
mkdir -p "$out"
python - "$out/mydata.npz" <<'PY'
import sys
import numpy as np
rng = np.random.default_rng(0)
n, classes = 600, 3
label = rng.integers(0, classes, n)
audio = rng.normal(size=(n, 12)) + np.eye(classes)[label].repeat(4, axis=1)
video = rng.normal(size=(n, 9)) + 0.5 * np.eye(classes)[label].repeat(3, axis=1)
np.savez(sys.argv[1], audio=audio.astype("float32"), video=video.astype("float32"), label=label)
PY
mmbalance train --data "$out/mydata.npz" --method mcr --set trainer.max_epochs=5 trainer.progress=false \
    --out "$out/run"
mmbalance diagnose "$out/run" --out "$out/diagnosis"
python -c "import json,sys; m=json.load(open(sys.argv[1])); print('test accuracy', m['test']['accuracy'])" "$out/run/metrics.json"
