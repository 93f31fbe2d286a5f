#!/usr/bin/env bash
# Rewards/s of every reward estimator beside the reference-style path, measured in the same run (nbs/06_reward.ipynb,
# "Speed"). Default: the paper presets (random weights), bf16 where the hardware has it (--precision auto), on a 100-
# and a 4000-frame batch; eager, then with the denoiser compiled where CUDA is.
# Reference implementation on one H100 (not this run): 248 rewards/s on 100 frames, 704/s on 4000; targets for this
# project there: >= 2,500/s and >= 7,000/s.
#   .ci/gpu_reward.sh                               on a GPU machine (a few minutes)
#   .ci/gpu_reward.sh --preset tiny --tokenizer_preset tiny --frames 10,40 --device cpu    smoke test (seconds)
# Extra arguments go to dr_bench_reward (the last value of a repeated option wins); --out FILE writes JSON (the
# compiled pass, where there is one, overwrites the eager one's).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
bench() { dr_bench_reward --frames 100,4000 --precision auto "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
echo "## eager"
bench "$@"
if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' && [[ " $* " != *" --device cpu "* ]]; then
  echo "## compiled denoiser (torch.compile; compilation not timed)"
  bench --compile "$@"
fi
