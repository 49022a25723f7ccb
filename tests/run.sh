#!/usr/bin/env bash
# The test command (README.md): installs what a fresh Debian machine lacks, builds the release
# preset, and runs every test with ctest. GPU tests skip where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs/install-deps.sh --with-slurm
# mpiexec refuses to start as root unless told that it is on purpose (containers, CI).
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1
cmake --preset release
cmake --build --preset release -j "$(nproc)"
ctest --preset release -j "$(nproc)" "$@"
