#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh Debian machine: offscreen GL libraries (Debian),
# a project virtual environment in .venv with the package and its test extras, real LIBERO
# in .venv-libero (scripts/setup_libero.sh: its robosuite 1.4 cannot share .venv's robosuite 1.5),
# and SIMPLER's ManiSkill3 port in .venv with Mesa 25 lavapipe (scripts/setup_simpler.sh).
# A second run reuses everything and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

GL_PACKAGES="libegl1 libegl-mesa0 libgl1 libosmesa6 libglfw3"
missing=""
for pkg in $GL_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "[setup] installing offscreen GL libraries:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi

# Reinstall only when the dependency list changed since the last successful install.
stamp=.venv/.vla-agents-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing vla-agents and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: 2.13.0 is the local CPU build; anything unpinned pulls CUDA wheels.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
bash scripts/setup_libero.sh
bash scripts/setup_simpler.sh
echo "[setup] ready: $(.venv/bin/python -c 'import vla_agents; print("vla_agents", vla_agents.__version__)')"
