#!/usr/bin/env bash
# Check notebooks and library are in sync, then run the test suite (pytest: one test per notebook + integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}

before=$(git status --porcelain)
nbdev_clean
nbdev_export
after=$(git status --porcelain)
if [ "$before" != "$after" ]; then
  echo "nbdev_clean / nbdev_export changed files: run them and commit the result." >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  git --no-pager diff --stat >&2
  exit 1
fi
python3 .ci/notebooks.py check
python3 .ci/readme.py --check
# two workers where pytest-xdist is installed (`--dev` installs it): most tests are single-threaded or wait on a
# subprocess or a browser; conftest.py gives each worker one torch thread
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${DR_TEST_WORKERS:-2} --dist loadgroup" || true)
python3 -m pytest -q -p no:cacheprovider --durations=25 $workers "$@" tests
