#!/usr/bin/env bash
# The README's example on a fresh Debian machine: installs what is missing, builds the release
# preset, writes a small random input and runs RACE attention on it with 2 MPI ranks.
#
#   bash jobs/example.sh
#
# Everything goes to out/example/: input.h5 (q, k, v, do), output.h5 (o, dq, dk, dv, planes and
# the run's attributes), metrics.json (the run's summary).
set -euo pipefail
cd "$(dirname "$0")/.."

jobs/install-deps.sh
# mpirun refuses to start as root unless told that it is on purpose (containers, CI); two ranks
# may share fewer cores.
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1

cmake --preset release
cmake --build --preset release -j "$(nproc)" --target racesp
racesp=build/release/src/cli/racesp

out=out/example
mkdir -p "$out"
# 2 sequences of 8192 tokens, 4 heads of dimension 32, and dL/do for the backward.
mpirun -np 2 "$racesp" generate --output "$out/input.h5" --batch 2 --tokens 8192 --heads 4 --dim 32 \
  --with-grad --overwrite
# Causal attention, forward and backward; each rank reads and writes its half of every sequence.
mpirun -np 2 "$racesp" attention --input "$out/input.h5" --output "$out/output.h5" --causal --backward \
  --tables 4 --planes 4 --overwrite --metrics "$out/metrics.json"

echo
echo "output: $out/output.h5"
h5ls "$out/output.h5"
echo
echo "read it with:"
echo "  h5dump -A $out/output.h5                                  # the attributes (tables, planes, beta, dbeta, ...)"
echo "  h5dump -d /o -s 0,0,0,0 -c 1,2,1,8 $out/output.h5          # o[0, 0:2, 0, 0:8]"
echo "  python3 -c \"import h5py; f = h5py.File('$out/output.h5'); print(f['o'].shape, dict(f.attrs))\""
