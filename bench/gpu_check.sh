#!/usr/bin/env bash
# Setting (b) of `mmbalance bench speed` on a GPU (issue 6): ResNet-18 audio + video at the
# CREMA-D sizes, batch 32, bf16 autocast; every method of the table plus the P sweep, then
# a torch.profiler table of multiloss and mcr_p32. One short call: about 3 minutes on an
# H100 (budget 5). Needs a CUDA build of torch (any 2.x); nothing else is downloaded.
#
#   bash bench/gpu_check.sh [OUT]          # OUT defaults to runs/bench/speed_gpu
#
# Paste the tests/gpu result line, OUT/speed.md (its first line names the card) and the
# OUT/profile/*.txt heads, and date the "GPU-only tests" line of docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/bench/speed_gpu}"
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch,sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to this torch"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# the device-dependent tests first (OGM's noise, the permutations, map_location; skipped on a CPU)
"$PY" -m pytest -q -rs -p no:cacheprovider tests/gpu
time "$PY" -m mmbalance bench speed --device cuda --precision bf16 --batch 32 --settings cremad --out "$OUT"
"$PY" -m mmbalance bench speed --device cuda --precision bf16 --batch 32 --settings cremad \
    --profile multiloss mcr_p32 --profile-steps 10 --out "$OUT/profile"
for f in "$OUT"/profile/profile_*.txt; do echo "== $f"; head -45 "$f"; done
