#!/usr/bin/env bash
# Device calls on a host of several H200s (2 or 4), from the checkout's root after
# `source .devdeps/setup.sh` (shared/device/README.md). Parts, in the order given:
#   build    everything, or the targets TARGETS names (build-gpu/)
#   tests    ctest -L gpu: the single-GPU tests and the 2- and 4-rank equality tests (NCCL and
#            MPI), the 1-vs-2-GPU training test among them; TESTS (a ctest -R regex) picks some
#   studies  run_study.py weak (8M tokens per GPU), strong (32M tokens) and collectives (state
#            sizes H = 1, 4, 16, 64 at 64K tokens per GPU) on 1, 2, 4 ... GPUs, bf16, B=1, D=128,
#            P=4, L=4; results packed into $OUT/studies-<name>.tgz (unpack under experiments/results)
#   train    experiments/train-measure.sh on every GPU: tokens/s at 1M tokens (sp and dp) and
#            the longest sequence that trains (LENGTHS; TRAIN_TIMEOUT bounds the part, default 300 s),
#            into $OUT/train-r<GPUS>.{jsonl,log}
#   experiments/gpu-multi.sh build tests studies train
# NAME (default h200x<GPUS>) prefixes the study folders. Each part is time-limited.
set -uo pipefail
parts=${*:-build tests studies train}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
out=${OUT:?set OUT to the folder for logs and results}
gpus=$(nvidia-smi -L | wc -l)
name=${NAME:-h200x$gpus}
ranks=1; r=2; while ((r <= gpus)); do ranks+=",$r"; r=$((r * 2)); done
bench=build-gpu/src/cuda/racesp_cuda_bench
nvidia-smi --query-gpu=name,memory.total --format=csv >"$out/gpu.txt"; nvidia-smi topo -m >>"$out/gpu.txt" 2>&1
for part in $parts; do
  case $part in
    build)
      { cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a &&
        timeout 420 cmake --build build-gpu -j "$(nproc)" ${TARGETS:+--target $TARGETS}; } >"$out/build.log" 2>&1 \
        || { grep -E "error" "$out/build.log" | head -30; tail -5 "$out/build.log"; exit 1; }
      echo "build: ok at ${SECONDS}s" ;;
    tests)
      timeout 420 ctest --test-dir build-gpu -L gpu ${TESTS:+-R "$TESTS"} -j 2 --output-on-failure --timeout 300 >"$out/ctest.log" 2>&1
      echo "tests: exit $? at ${SECONDS}s"
      grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)|Not Run" "$out/ctest.log" | head -20 ;;
    studies)
      study() { timeout "$1" python3 experiments/run_study.py "${@:2}" --results /tmp/studies --bench cuda \
                  --binary "$bench" --dim 128 2>&1 | grep -E "^run_study|tokens/s" | tail -4; }
      study 150 weak --name "$name-weak" --ranks "$ranks" --tokens 8388608 --heads 4 --repeats 5
      study 180 strong --name "$name-strong" --ranks "$ranks" --tokens 33554432 --heads 4 --repeats 5
      study 150 collectives --name "$name-collectives" --ranks "$ranks" --tokens 65536 --heads-list 1,4,16,64 --repeats 9
      tar czf "$out/studies-$name.tgz" -C /tmp/studies .
      echo "studies: done at ${SECONDS}s" ;;
    train)
      OUT=$out RUN_TIMEOUT=${RUN_TIMEOUT:-90} LENGTHS=${LENGTHS:-"4M 4.5M 5M 8M 9M 10M"} \
        RACESP_BIN=build-gpu/src/cli/racesp timeout "${TRAIN_TIMEOUT:-300}" experiments/train-measure.sh "$gpus" >"$out/train.log" 2>&1
      echo "train: exit $? at ${SECONDS}s"
      cut -c1-400 "$out/train-r$gpus.jsonl" 2>/dev/null ;;
    *) echo "gpu-multi.sh: unknown part '$part' (build, tests, studies, train)" >&2; exit 2 ;;
  esac
done
