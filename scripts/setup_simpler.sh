#!/usr/bin/env bash
# Idempotent set-up of SIMPLER's ManiSkill3 port (mani-skill 3.0.1, sapien 3.0.3) in .venv.
# sapien 3 renders through Vulkan; on a machine without a GPU that is Mesa's lavapipe, and Debian
# bookworm's Mesa 22 lavapipe is too old for it, so Mesa 25 comes from bookworm-backports (robosuite's
# and LIBERO's EGL rendering keep working after the upgrade). mani-skill's dependencies leave torch
# and numpy as they are, so it shares .venv. scripts/setup.sh calls this; a second run returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

mesa_version() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true; }
if ! { ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && mesa_version | grep -q '^25\.'; }; then
  backports=/etc/apt/sources.list.d/bookworm-backports.sources
  if [ ! -f "$backports" ]; then
    # The same mirror and keyring as the machine's own bookworm stanza: no host name written here.
    stanza=$(awk 'BEGIN{RS=""} /(^|\n)Suites: bookworm([ \n]|$)/ {print; exit}' /etc/apt/sources.list.d/debian.sources)
    uri=$(printf '%s\n' "$stanza" | sed -n 's/^URIs: *//p' | head -n1)
    keyring=$(printf '%s\n' "$stanza" | sed -n 's/^Signed-By: *//p' | head -n1)
    if [ -z "$uri" ] || [ -z "$keyring" ]; then
      echo "[setup-simpler] no bookworm stanza with URIs/Signed-By in /etc/apt/sources.list.d/debian.sources" >&2
      exit 1
    fi
    echo "[setup-simpler] adding bookworm-backports (for Mesa 25 lavapipe)"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' "$uri" "$keyring" \
      | $SUDO tee "$backports" >/dev/null
  fi
  echo "[setup-simpler] installing Mesa 25 lavapipe (mesa-vulkan-drivers, libvulkan1) from bookworm-backports"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
fi

venv=.venv
stamp=$venv/.vla-agents-simpler-installed
want=$(sha256sum pyproject.toml scripts/setup_simpler.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup-simpler] installing mani-skill into $venv"
  # torch named with its pin so that nothing mani-skill pulls can swap the CPU build.
  "$venv/bin/python" -m pip install -q "torch==2.13.0" -e ".[simpler]"
  echo "$want" > "$stamp"
fi
echo "[setup-simpler] ready: $("$venv/bin/python" -c 'import importlib.metadata as m; print("mani-skill", m.version("mani-skill"), "sapien", m.version("sapien"))'), Mesa $(mesa_version)"
