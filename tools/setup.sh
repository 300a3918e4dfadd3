#!/usr/bin/env bash
# One-time (idempotent) set-up on Debian with Python 3.11: system packages, then a virtualenv in .venv
# with liver-node and its pinned dependencies. Sourced by tools/serve.sh and tools/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages: DCMTK, dicom3tools and Orthanc are the real DICOM peers of the test suite,
# prometheus gives promtool; libgl1/libglib2.0-0 let ultralytics' OpenCV import on a server.
APT_PACKAGES="${LIVER_NODE_APT_PACKAGES-python3-venv dcmtk dicom3tools orthanc prometheus libgl1 libglib2.0-0 fonts-dejavu-core systemd}"
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  # Debian starts the packaged Orthanc and Prometheus services; the tests run their own instances.
  for svc in orthanc prometheus; do $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; done
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.liver-node-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ "${free_kb:-0}" -lt $((7 * 1024 * 1024)) ]; then
    echo "setup: warning: $((free_kb / 1024)) MiB free here; the virtualenv needs about 6 GiB (CUDA build of torch)" >&2
  fi
  # --no-cache-dir: the CUDA build of torch is ~5.5 GB installed; a second copy in pip's cache
  # is what a nearly full disk cannot afford.
  .venv/bin/python -m pip install -q --no-cache-dir --upgrade pip
  # torch/torchvision are pinned in pyproject.toml (CUDA build; runs on CPU too).
  .venv/bin/python -m pip install -q --no-cache-dir -e '.[test]'
  touch "$stamp"
fi

# ultralytics must never reach the network (pipeline/detect/offline.py says how and why).
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR="$PWD/.yolo"
