#!/usr/bin/env bash
# Create the virtualenv (if missing) and install distill into it, keeping any torch at hand.
#
# torch is chosen in this order, so a multi-GB CUDA build is never pulled by accident:
#   1. a torch already importable in the venv: kept as it is;
#   2. $TORCH_SPEC if set (e.g. TORCH_SPEC="torch==2.4.1" or a wheel path);
#   3. a torch importable by the base interpreter: the venv is created with
#      --system-site-packages and reuses it;
#   4. a CPU wheel of torch lying in pip's find-links directories (offline machines);
#   5. no NVIDIA GPU: the CPU build from the PyTorch CPU index;
#   6. otherwise: torch from PyPI (CUDA build, for GPU machines).
# $EXTRA_SPECS (e.g. "transformers==4.56.0") are installed with the package, to test the lower bounds.
set -euo pipefail
VENV="${1:-.venv}"
BASE_PY="${PYTHON:-python3}"
say() { echo "[install] $*"; }
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | grep -v -e "is ignored" -e "^Requirement already" || true; }

if [ ! -x "$VENV/bin/python" ]; then
  if [ -z "${TORCH_SPEC:-}" ] && "$BASE_PY" -c "import torch" >/dev/null 2>&1; then
    say "reusing the base interpreter's torch $("$BASE_PY" -c 'import torch; print(torch.__version__)')"
    "$BASE_PY" -m venv --system-site-packages "$VENV"
  else
    "$BASE_PY" -m venv "$VENV"
  fi
fi

if ! "$VENV/bin/python" -W ignore -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    say "installing $TORCH_SPEC"
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  else
    pytag="cp$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
    links="$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)"
    wheel=""
    for d in $links; do
      d="${d#file://}"
      [ -d "$d" ] || continue
      cand="$(ls "$d"/torch-*+cpu-"$pytag"-*.whl 2>/dev/null | sort -V | tail -n 1 || true)"
      [ -n "$cand" ] && wheel="$cand"
    done
    if [ -n "$wheel" ]; then
      say "installing the CPU build of torch at hand: $(basename "$wheel")"
      "$VENV/bin/python" -m pip install -q "$wheel" 2>&1 | grep -v "is ignored" || true
    elif ! command -v nvidia-smi >/dev/null 2>&1; then
      say "no NVIDIA GPU: installing the CPU build of torch"
      "$VENV/bin/python" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
    else
      say "installing torch from PyPI"
      "$VENV/bin/python" -m pip install -q torch
    fi
  fi
fi
"$VENV/bin/python" -W ignore -c "import torch" || { echo "error: torch could not be installed into $VENV; install one yourself (e.g. TORCH_SPEC=torch==2.4.1 make install)" >&2; exit 1; }

say "installing distill (editable) with its test extra"
# shellcheck disable=SC2086  # EXTRA_SPECS is a list of requirement specifiers
quiet_pip install -q -e ".[test]" ${EXTRA_SPECS:-}
"$VENV/bin/python" -W ignore -c "import distill, torch; print('[install] distill', distill.__version__, 'with torch', torch.__version__)"
