#!/usr/bin/env bash
# Setting (b) of `mmbalance bench speed` on a GPU: ResNet-18 audio + video at the
# CREMA-D sizes, batch 32, bf16 autocast; every method of the table plus the P sweep, then
# a torch.profiler table of multiloss and mcr_p32. Then the paper's advanced models
# at the paper's batch sizes, bf16: (d) cremad_conformer (wav2vec2-large-robust's first 12
# layers, random init, -> Conformer; face features -> Conformer), batch 8, and (e) sthsth_swin
# (a Video Swin-T each for video and flow, 16 x 224 x 224), batch 16: multiloss, mcr_p32 and
# mcr_p32_ceb, with round-by-round ratios. (d) needs transformers (the 'pretrained' extra) and is
# skipped without it. The (b) part takes about 3 minutes on an H100; (d) and (e) have not run on
# a GPU yet (give the whole script 10 minutes). Needs a CUDA build of torch (any 2.x); nothing
# else is downloaded.
#
#   bash studies/gpu_check.sh [OUT]          # OUT defaults to runs/bench/speed_gpu
#
# Paste the tests/gpu result line, OUT/speed.md (its first line names the card), the
# OUT/profile/*.txt heads and OUT/advanced/*/speed.md (docs/performance.md, "The paper's Conformer
# and Swin models"), and date the "GPU-only tests" line of docs/testing.md.
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
# the paper's Conformer (d) and Swin (e) models at their batch sizes
ADVANCED=(sthsth_swin)
if "$PY" -c 'import transformers' 2>/dev/null; then
  ADVANCED=(cremad_conformer sthsth_swin)
else
  echo "== transformers is not installed: setting cremad_conformer skipped (pip install 'mmbalance[pretrained]')"
fi
for setting in "${ADVANCED[@]}"; do
  case "$setting" in cremad_conformer) batch=8 ;; sthsth_swin) batch=16 ;; esac
  time "$PY" -m mmbalance bench speed --device cuda --precision bf16 --batch "$batch" --settings "$setting" \
      --methods multiloss mcr_p32 mcr_p32_ceb --no-sweeps --out "$OUT/advanced/$setting"
done
