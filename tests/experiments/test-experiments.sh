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
echo "test-experiments: OK"
