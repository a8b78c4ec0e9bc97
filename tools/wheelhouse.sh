#!/usr/bin/env bash
# Download into DIR every wheel distill needs beyond a stock CUDA PyTorch install, for an air-gapped GPU node:
#
#   bash tools/wheelhouse.sh DIR [--python-version 3.12] [--platform manylinux_2_28_x86_64]
#
# run on a machine with internet (any OS pip runs on; nothing is installed), then copy DIR to the node and
#   bash tools/install.sh --wheelhouse DIR      (or: make install WHEELHOUSE=DIR)
# there, in an environment that already has torch. DIR holds deepspeed (built as a pure-Python wheel when PyPI
# has only its sdist), datasets, transformers, ... with their dependencies, pytest (for `make gpu-check`),
# distill itself as a wheel, and wheelhouse.txt, the manifest install.sh checks. torch, triton and what only
# they need (nvidia-*, sympy, ...) are left out: the node's CUDA torch brings them.
# --python-version defaults to this interpreter's, --platform to manylinux_2_28_x86_64 (what PyTorch's CUDA
# wheels need). A platform pip cannot satisfy: `error:` naming the package, exit 2. DIR must be new or empty;
# the wheels land in it all at once at the end, so a failure leaves it as it was.
# $PYTHON (default python3) runs pip.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/wheelhouse.py" "$@"
