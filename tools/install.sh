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
#
# Offline, on an air-gapped GPU node: `bash tools/install.sh --wheelhouse DIR [VENV]` (make install WHEELHOUSE=DIR)
# installs distill from a folder built by tools/wheelhouse.sh, with `pip --no-index`, into an environment that
# already has torch (steps 1-4 above; no download is ever tried). The folder is checked against its manifest and
# pip resolves every requirement from it (--dry-run) before anything is installed: a missing folder or wheel is
# `error:` naming it, exit 2, and the venv is left as it was (one this run created is removed again).
set -euo pipefail
usage="usage: bash tools/install.sh [--wheelhouse DIR] [VENV]"
die() { echo "error: $*" >&2; exit 2; }
VENV=""
WHEELHOUSE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) [ $# -ge 2 ] && [ -n "$2" ] || die "--wheelhouse needs a folder ($usage)"; WHEELHOUSE="$2"; shift 2 ;;
    --wheelhouse=*) WHEELHOUSE="${1#*=}"; [ -n "$WHEELHOUSE" ] || die "--wheelhouse needs a folder ($usage)"; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) die "unknown option $1 ($usage)" ;;
    *) [ -z "$VENV" ] || die "one VENV only, got $VENV and $1 ($usage)"; VENV="$1"; shift ;;
  esac
done
VENV="${VENV:-.venv}"
BASE_PY="${PYTHON:-python3}"
say() { echo "[install] $*"; }
manifest_field() { sed -n "s/^$1: //p" "$WHEELHOUSE/wheelhouse.txt"; }

# The wheelhouse is checked before anything is written: the folder, its manifest, every wheel the manifest
# lists, and the Python it was built for.
check_wheelhouse() {
  local fix="build one on a machine with internet: bash tools/wheelhouse.sh DIR --python-version X.Y, and copy it here"
  [ -d "$WHEELHOUSE" ] || die "the wheelhouse folder $WHEELHOUSE does not exist; $fix"
  [ -f "$WHEELHOUSE/wheelhouse.txt" ] || die "$WHEELHOUSE has no wheelhouse.txt, so it is not a wheelhouse; $fix"
  local w missing=""
  for w in $(manifest_field wheel); do
    [ -f "$WHEELHOUSE/$w" ] || missing="$missing $w"
  done
  [ -z "$missing" ] || die "the wheelhouse $WHEELHOUSE is incomplete: its manifest lists$missing, which is not there; copy the whole folder again, or rebuild it with tools/wheelhouse.sh"
  local py="$BASE_PY" want have
  [ -x "$VENV/bin/python" ] && py="$VENV/bin/python"
  want="$(manifest_field python-version)"
  have="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  [ "$want" = "$have" ] || die "the wheelhouse $WHEELHOUSE is for Python $want, but $VENV's is $have; rebuild it with tools/wheelhouse.sh DIR --python-version $have"
}

# pip resolves everything from the wheelhouse first (--dry-run); only then is anything installed.
install_from_wheelhouse() {
  local req report out name
  req="$(manifest_field requirement)"
  req="${req:-distill}"
  report="$(mktemp)"
  # shellcheck disable=SC2086  # EXTRA_SPECS is a list of requirement specifiers
  if ! out="$("$VENV/bin/python" -m pip install --dry-run --no-index --find-links "$WHEELHOUSE" --report "$report" "$req" ${EXTRA_SPECS:-} 2>&1)"; then
    rm -f "$report"
    name="$(sed -n 's/.*No matching distribution found for \([^ ;]*\).*/\1/p' <<<"$out" | head -n 1)"
    [ -n "$name" ] || { echo "$out" | grep -v "is ignored" | tail -n 5 >&2; name="a requirement (pip's words above)"; }
    case "$name" in
      torch*|triton*) die "$VENV lacks $name, which a wheelhouse leaves to the CUDA torch install; nothing was installed. Install torch (CUDA builds bring triton) into $VENV first" ;;
    esac
    die "the wheelhouse $WHEELHOUSE has no wheel for $name that fits $VENV (Python, platform or torch); nothing was installed. Rebuild it with tools/wheelhouse.sh for this machine's Python and platform"
  fi
  say "installing $req offline from $WHEELHOUSE ($("$VENV/bin/python" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["install"]))' "$report") packages)"
  rm -f "$report"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELHOUSE" "$req" ${EXTRA_SPECS:-} 2>&1 | { grep -v "is ignored" || true; }
}

CREATED=""
if [ -n "$WHEELHOUSE" ]; then
  check_wheelhouse
  [ -e "$VENV" ] || CREATED=1
  # nothing half-installed left behind: a venv this run created goes again if the run fails
  trap 'rc=$?; if [ "$rc" -ne 0 ] && [ -n "$CREATED" ]; then rm -rf -- "$VENV"; fi' EXIT
fi
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
    elif [ -n "$WHEELHOUSE" ]; then
      die "$VENV has no torch, and --wheelhouse installs offline into an environment that already has one; install your CUDA torch there first (or give its wheel: TORCH_SPEC=/path/to/torch-....whl)"
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

if [ -n "$WHEELHOUSE" ]; then
  install_from_wheelhouse
else
  say "installing distill (editable) with its test extra"
  # shellcheck disable=SC2086  # EXTRA_SPECS is a list of requirement specifiers
  quiet_pip install -q -e ".[test]" ${EXTRA_SPECS:-}
fi
"$VENV/bin/python" -W ignore -c "import distill, torch; print('[install] distill', distill.__version__, 'with torch', torch.__version__)"
