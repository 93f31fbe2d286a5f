#!/usr/bin/env bash
# GPU readiness of the pixel protocol (nbs/16_compare_rl, `gpu_readiness`): the pixel DrQ-v2 learner's updates/s in
# float32, bfloat16 autocast and compiled, beside a reference-style update timed in the same run, then env frames/s
# of the whole pixel loop with the fastest variant and the small Diffusion Reward model on the same GPU.
# Targets on one H100-class GPU: >= 200 updates/s, >= 600 env frames/s.
#   .ci/gpu_rl.sh                                  # full scale on cuda (a few minutes)
#   .ci/gpu_rl.sh --device cpu --preset tiny ...   # a tiny smoke run (tests/test_rl.py)
# Arguments: see .ci/gpu_rl.py (--task, --reward, --reward_checkpoint, --updates, --episodes, --variants, --out, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl} DR_NO_PROGRESS=${DR_NO_PROGRESS:-1}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the working tree's package, installed or not
exec python3 .ci/gpu_rl.py "$@"
