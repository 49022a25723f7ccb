#!/usr/bin/env bash
# Checks the experiments/ scripts without matplotlib, numpy or torch. Usage: test-experiments.sh RACESP PYTHON3
set -euo pipefail
racesp=$1
py=${2:-python3}
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test-experiments: FAILED: $*" >&2; exit 1; }
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_WAIT_POLICY=passive

# 1. Every script parses (without writing __pycache__ into the tree).
"$py" - "$root"/experiments/*.py "$root"/experiments/baselines/*.py <<'PY' || fail "a script does not parse"
import ast, sys
for f in sys.argv[1:]:
    ast.parse(open(f).read(), f)
print(f"parsed {len(sys.argv) - 1} scripts")
PY

# 2. The cost model: formulas and fitting, then the fits on the committed results.
"$py" "$root/experiments/cost_model.py" --self-test || fail "cost_model.py --self-test"
"$py" "$root/experiments/cost_model.py" --out "$tmp/cm.json" >"$tmp/cm.md" || fail "cost_model.py on the committed results"
grep -q "| 4096 |" "$tmp/cm.md" || fail "cost model table has no p = 4096 row"

# 3. run_study.py: the commands of a dry run, then a small real sweep under mpirun.
"$py" "$root/experiments/run_study.py" weak --dry-run --ranks 1,2 --tokens 4096 --binary "$racesp" 2>"$tmp/dry.txt"
grep -q -- "-np 2 .*bench --device cpu --tokens-per-rank 4096" "$tmp/dry.txt" || { cat "$tmp/dry.txt"; fail "dry run commands"; }
"$py" "$root/experiments/run_study.py" seqlen --binary "$racesp" --results "$tmp/results" --name t \
  --ranks 1,2 --tokens-list 256,1000 --heads 2 --dim 16 --repeats 1 --warmup 0 --threads 1 2>"$tmp/run.log" \
  || { cat "$tmp/run.log"; fail "run_study.py seqlen"; }
[[ -s "$tmp/results/t/machine.txt" ]] || fail "no machine.txt"
grep -q "racesp --version: racesp" "$tmp/results/t/machine.txt" || fail "machine.txt lacks racesp --version"
"$py" - "$tmp/results/t/seqlen.jsonl" <<'PY' || fail "seqlen.jsonl content"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 8, len(rows)  # 2 rank counts x 2 lengths x (causal, non-causal)
assert {(r["run_ranks"], r["tokens"], r["causal"]) for r in rows} == {(p, t, c) for p in (1, 2) for t in (256, 1000) for c in (False, True)}
for r in rows:
    assert r["study"] == "seqlen" and r["command"] == "bench" and r["median_s"] > 0 and r["tokens_per_s"] > 0
    assert r["sp_size"] == r["run_ranks"] and r["machine"]["ranks"] == r["run_ranks"]
print(f"seqlen.jsonl: {len(rows)} lines OK")
PY
# 4. source_counters.py on a small report of known counts (ncu prints each kernel's table twice).
"$py" - "$root/experiments/source_counters.py" "$tmp/sc.csv" <<'PY' || fail "source_counters.py"
import subprocess, sys
script, path = sys.argv[1], sys.argv[2]
header = '"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed","stall_wait","stall_barrier","stall_wait (Not Issued)"'
rows = ['"0x0","      LDC R1, c[0x0][0x28]","10","4","10","0","0"',      # 4 warps
        '"0x10","      HMMA.16816.F32.BF16 R4, R8, R12, R4","60","8","50","10","0"',
        '"0x20","      BAR.SYNC.DEFER_BLOCKING 0x0","0","4","0","0","0"',
        '"0x30","  @P0   BRA 0x0","30","4","0","30","0"',
        '"0x40","      BAR.ARV R9, 0x40","0","4","0","0","0"',             # a named barrier's arrive
        '"0x50","      EXIT","0","4","0","0","0"']
table = "\n".join([header] + rows)
open(path, "w").write(f'"Kernel Name","void k(int)",\n{table}\n"Kernel Name","void k(int)",\n{table}\n')
out = subprocess.run([sys.executable, script, path, "--hot", "20"], capture_output=True, text=True, check=True).stdout
lines = [l.split() for l in out.splitlines()]
assert out.count("## void k(int)") == 1, out
assert "28 warp instructions, 4 warps, 7.0 per warp, 100 stall samples" in out, out
assert ["HMMA", "28.6%", "60.0%", "2.0"] in lines, out                  # 8 of 28; 60 of 100; 8 / 4 warps
assert "stall reasons: wait 60.0%, barrier 40.0%" in out, out
assert ["0-", "2", "70.0%", "4.0", "2.0", "BAR.SYNC.DEFER_BLOCKING", "0x0"] in lines, out  # a range ends at the barrier
assert ["3-", "4", "30.0%", "2.0", "0.0", "BAR.ARV", "R9,", "0x40"] in lines, out  # and at an arrive
assert ["5-", "5", "0.0%", "1.0", "0.0", "EXIT"] in lines, out
hot = out.split("instructions with >= 20.0% of the samples")[1].splitlines()[1:]
assert [l.split()[0] for l in hot if l.strip()] == ["1", "3"], out    # 60 and 30 samples of 100; not 10
print("source_counters.py: OK")
PY
echo "test-experiments: OK"
