#!/usr/bin/env bash
# One device call on an H200 host for racesp train --device cuda: build racesp and the GPU model
# tests, run the model tests, the training measurement (experiments/train-measure.sh 1) and
# the end-to-end train tests. Each part is time-limited; logs go to $OUT. Run it after
# `source .devdeps/setup.sh` (shared/device/README.md), from the checkout's root:
#   experiments/train-gpu-h200.sh [build|tests|measure|cli ...]   (default: all four in order)
set -uo pipefail
parts=${*:-build tests measure cli}
export NCCL_NVLS_ENABLE=0
# Whole-call deadline (DEADLINE seconds from the start, default 460): each part gets at most its
# own limit and what is left, keeping RESERVE seconds (default 75) for the end-to-end tests.
deadline=${DEADLINE:-460}
reserve=${RESERVE:-75}
left() {  # left LIMIT [KEEP]: seconds this part may take
  local t=$((deadline - SECONDS - ${2:-0}))
  ((t > $1)) && t=$1
  ((t < 5)) && t=5
  echo "$t"
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
for part in $parts; do
  case $part in
    build)
      { timeout 60 cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a &&
        timeout "$(left 300 150)" cmake --build build-gpu -j 16 --target racesp racesp_cuda_model_tests racesp_cuda_train_tests
      } >"$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -30; tail -5 "$OUT/build.log"; exit 1; }
      echo "build: ok in ${SECONDS}s" ;;
    tests)
      timeout "$(left 60 "$reserve")" build-gpu/tests/cuda/racesp_cuda_model_tests >"$OUT/model-tests.log" 2>&1
      echo "model tests: exit $? at ${SECONDS}s"
      grep -E "^\[  (PASSED|FAILED|SKIPPED) |rel error|Failure|Expected|Which is|gradient of|loss gpu" "$OUT/model-tests.log" | head -40 ;;
    measure)
      RUN_TIMEOUT=${RUN_TIMEOUT:-70} RACESP_BIN=build-gpu/src/cli/racesp timeout "$(left 200 "$reserve")" \
        experiments/train-measure.sh 1 \
        >"$OUT/measure.log" 2>&1
      echo "measure: exit $? at ${SECONDS}s"
      cut -c1-600 "$OUT/train-r1.jsonl" 2>/dev/null; tail -3 "$OUT/measure.log" ;;
    cli)
      timeout "$(left 120)" build-gpu/tests/cuda/racesp_cuda_train_tests >"$OUT/cli-tests.log" 2>&1
      echo "cli tests: exit $? at ${SECONDS}s"
      grep -E "^\[  (PASSED|FAILED|SKIPPED) |largest relative|Failure|Expected|Which is" "$OUT/cli-tests.log" | head -30 ;;
  esac
done
