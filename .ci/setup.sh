#!/usr/bin/env bash
# Install diffusion-reward and what it needs on a Debian-like machine (Python >= 3.10, no GPU needed).
#   bash .ci/setup.sh          # library + Adroit extra
#   bash .ci/setup.sh --dev    # plus the pinned nbdev 2 tool set and pytest
set -euo pipefail
cd "$(dirname "$0")/.."
extras="adroit"
[ "${1:-}" = "--dev" ] && extras="dev,adroit"
PY=${PYTHON:-python3}

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
  echo "diffusion-reward needs Python >= 3.10; $PY is $("$PY" --version 2>&1)." >&2; exit 1; }

# Headless MuJoCo rendering needs EGL (libegl1 + Mesa's drivers) or OSMesa.
sys_pkgs="libegl1 libgl1-mesa-dri libosmesa6"
missing=""
if command -v dpkg-query >/dev/null 2>&1; then
  for p in $sys_pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing system packages for headless rendering:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "Missing system packages for headless rendering:$missing" >&2
    echo "Install them as root:  sudo apt-get install -y$missing" >&2
    exit 1
  fi
fi

# Keep an installed torch; otherwise take the 2.13.0 build (CPU where the machine provides one locally).
"$PY" -c 'import torch' 2>/dev/null || "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[$extras]"
"$PY" -m pip check
echo "diffusion-reward installed (extras: $extras)."
