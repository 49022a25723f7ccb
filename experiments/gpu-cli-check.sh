#!/usr/bin/env bash
# One device call on a multi-GPU H200 host: the 2- and 4-rank GPU tests (NCCL), and
# `racesp attention --device cuda` against `--device cpu` end to end (HDF5 in and out), forward
# and backward, causal and not, at 2 and 4 ranks.
set -uo pipefail
source .devdeps/setup.sh
export NCCL_NVLS_ENABLE=0
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a >"$OUT/cfg.log" 2>&1 || { tail -30 "$OUT/cfg.log"; exit 1; }
cmake --build build-gpu -j 32 --target racesp racesp_cuda_mpi_tests >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
ctest --test-dir build-gpu -R cuda_mpi --output-on-failure --timeout 300 >"$OUT/ctest.log" 2>&1
grep -E "tests passed|tests failed|Failed|FAILED" "$OUT/ctest.log" | head -20
R=build-gpu/src/cli/racesp
$R generate --output /tmp/in.h5 --batch 2 --tokens 3001 --heads 2 --dim 64 --with-grad --quiet
for c in false true; do
  mpirun -np 2 --bind-to none $R attention --input /tmp/in.h5 --output /tmp/cpu_$c.h5 --backward --causal $c --device cpu --quiet
  for n in 2 4; do
    mpirun -np $n --bind-to none -x NCCL_NVLS_ENABLE $R attention --input /tmp/in.h5 --output /tmp/cuda${n}_$c.h5 \
      --backward --causal $c --device cuda --quiet
  done
done 2>&1 | tail -5
python3 - <<'PY' 2>&1 | tee "$OUT/cli-check.txt"
import h5py, numpy as np
for c in ("false", "true"):
    ref = h5py.File(f"/tmp/cpu_{c}.h5", "r")
    for n in (2, 4):
        got = h5py.File(f"/tmp/cuda{n}_{c}.h5", "r")
        errs = {k: float(np.linalg.norm(got[k][...] - ref[k][...]) / np.linalg.norm(ref[k][...])) for k in ("o", "dq", "dk", "dv")}
        db = abs(got.attrs["dbeta"] - ref.attrs["dbeta"]) / abs(ref.attrs["dbeta"])
        print(f"causal={c} ranks={n} cuda vs cpu:", " ".join(f"{k} {v:.2e}" for k, v in errs.items()), f"dbeta {db:.2e}")
PY
