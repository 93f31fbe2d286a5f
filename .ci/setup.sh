#!/usr/bin/env bash
# Install diffusion-reward and what it needs on a Debian-like machine (Python >= 3.10, no GPU needed).
#   bash .ci/setup.sh          # library + Adroit extra
#   bash .ci/setup.sh --dev    # plus the pinned nbdev 2 tool set, pytest, the site builder (Sphinx, myst-nb),
#                              # JupyterLab, Playwright + Debian's chromium, the site's JavaScript (npm, pinned)
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
# Conflicts inside what this package pulls in fail the install; a conflict of some other tool on the machine (say, one
# that pins an old docutils that the docs tools replace) is only reported.
"$PY" - <<'PYEOF'
import re, subprocess, sys
from importlib.metadata import distribution, PackageNotFoundError
from packaging.requirements import Requirement
norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
ours, todo = set(), [('diffusion_reward', {'dev', 'adroit'})]
while todo:
    name, extras = todo.pop()
    if norm(name) in ours: continue
    ours.add(norm(name))
    try: reqs = distribution(name).requires or []
    except PackageNotFoundError: continue
    for r in map(Requirement, reqs):
        if r.marker is None or any(r.marker.evaluate({'extra': e}) for e in (extras or {''})): todo.append((r.name, set(r.extras)))
out = subprocess.run([sys.executable, '-m', 'pip', 'check'], capture_output=True, text=True).stdout.splitlines()
bad = [l for l in out if l.split() and norm(l.split()[0]) in ours]
for l in out:
    if l not in bad and 'No broken requirements' not in l: print(f'note (not a diffusion-reward dependency): {l}')
if bad: sys.exit('pip check:\n' + '\n'.join(bad))
PYEOF

if [ "${1:-}" = "--dev" ]; then
  # Tutorial site and browser tests. Debian's chromium, driven by Playwright through executable_path (never run
  # `playwright install`); the site's JavaScript (require.js, the ipywidgets HTML manager, MathJax) from npm at the
  # versions pinned in .ci/docs/package.json, kept in a cache folder that .ci/docs.py copies into each site.
  as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
  apt_updated=""
  apt_install() { [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
                  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if as_root; then echo "Installing chromium for the browser tests"; apt_install chromium
    else echo "Browser tests will skip: install chromium as root (sudo apt-get install -y chromium)." >&2; fi
  fi
  if ! command -v npm >/dev/null 2>&1 && as_root; then echo "Installing nodejs and npm"; apt_install nodejs npm; fi
  cache=${DR_DOCS_CACHE:-$HOME/.cache/diffusion-reward-docs}
  if command -v npm >/dev/null 2>&1; then
    mkdir -p "$cache" && cp .ci/docs/package.json "$cache/package.json"
    npm install --prefix "$cache" --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null
    echo "Site JavaScript (pinned, from npm) in $cache."
  else
    echo "No npm: .ci/docs.py cannot build the site until the pinned packages are in $cache (needs npm)." >&2
  fi
fi
echo "diffusion-reward installed (extras: $extras)."
