#!/usr/bin/env bash
# The serving image's entrypoint: `longdoc serve`, the launcher a laptop runs too. It is
# configured by LONGDOC_* environment variables (every flag reads LONGDOC_<FLAG>, see
# `longdoc serve --help`; the Dockerfile sets the image's defaults), and takes more
# `longdoc serve` flags as arguments, e.g. --triton-arg=--log-verbose=1.
set -euo pipefail
# NGC's own entrypoint checks the driver and enables CUDA forward compatibility where
# needed, then execs its arguments: keep it in the chain when it is there.
nvidia=/opt/nvidia/nvidia_entrypoint.sh
[[ -x "$nvidia" ]] || nvidia=""
exec ${nvidia:+"$nvidia"} longdoc serve "$@"
