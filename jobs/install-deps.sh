#!/usr/bin/env bash
# Installs, through apt-get, the Debian packages that building and testing RaceSP needs and this
# machine lacks. Does nothing when everything is there. Usage: jobs/install-deps.sh [--with-slurm]
set -euo pipefail

packages=(build-essential cmake ninja-build pkg-config
          libopenmpi-dev openmpi-bin
          libhdf5-openmpi-dev hdf5-tools
          libboost-program-options-dev
          nlohmann-json3-dev
          libgtest-dev
          libopenblas-dev)  # BLAS for the model (src/model); any CBLAS works
# A single-machine SLURM for the jobs/ tests.
slurm_packages=(slurmctld slurmd slurm-client munge libpmix-dev)  # srun --mpi=pmix dlopens pmix2/lib/libpmix.so from libpmix-dev
if [[ "${1:-}" == "--with-slurm" ]]; then
  packages+=("${slurm_packages[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "installing: ${missing[*]}" >&2
sudo=()
[[ $(id -u) -ne 0 ]] && sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
