#!/usr/bin/env python3
"""Where a kernel's time goes, from Nsight Compute's source counters (gpu-notes.md, v41 and v42).

Input: the CSV of `ncu -i REPORT --page source --print-source sass --csv` (plain or .gz), for a
report taken with `--section SourceCounters`: every SASS instruction of each kernel with its
executions and stall samples. For each kernel (or those whose name contains --kernel) it prints

  - warp instructions per warp, and per opcode their share, their share of the stall samples and
    their count per warp, then the stall reasons over the whole kernel;
  - the SASS in ranges that end at each barrier (BAR.SYNC, a named barrier's BAR.ARV too) or after
    --range instructions: share of the stall samples, instructions and HMMA per warp (a warp's
    wait at a barrier is sampled on the instruction after it, so it counts in the range that
    follows); with a large --range, one range per stretch between barriers (v44's per role and step);
  - every instruction holding at least --hot percent of the samples, with its two main reasons.

Per warp means over the whole launch: divide by the chunks a warp walks for per-chunk figures.
"""
import argparse
import collections
import csv
import gzip
import io
import sys


def kernels(text):
    """(name, header, rows) of each kernel in the CSV, each kernel once."""
    seen = {}
    for block in text.split('"Kernel Name",')[1:]:
        lines = block.splitlines()
        name = next(csv.reader([lines[0]]))[0]
        table = list(csv.reader(io.StringIO("\n".join(lines[1:]))))
        if name in seen or len(table) < 2:
            continue
        header = table[0]
        seen[name] = (header, [r for r in table[1:] if len(r) == len(header)])
    return [(name, h, rows) for name, (h, rows) in seen.items()]


def opcode(sass):
    words = sass.split()
    op = words[1] if words[0].startswith("@") else words[0]
    return op.split(".")[0]


def report(name, header, rows, args):
    executed = header.index("Instructions Executed")
    samples = header.index("Warp Stall Sampling (All Samples)")
    reasons = [(c[len("stall_"):], header.index(c)) for c in header
               if c.startswith("stall_") and "Not Issued" not in c]
    warps = int(rows[0][executed])  # the first instruction runs once per warp
    total = sum(int(r[executed]) for r in rows)
    sampled = sum(int(r[samples]) for r in rows) or 1
    print(f"## {name}")
    print(f"{total} warp instructions, {warps} warps, {total / warps:.1f} per warp, {sampled} stall samples")

    count, stalled = collections.Counter(), collections.Counter()
    for r in rows:
        count[opcode(r[1])] += int(r[executed])
        stalled[opcode(r[1])] += int(r[samples])
    print("opcode      instr  samples  per warp")
    for op, n in count.most_common(args.opcodes):
        print(f"{op:<10} {100 * n / total:5.1f}%  {100 * stalled[op] / sampled:5.1f}%  {n / warps:9.1f}")
    why = collections.Counter()
    for r in rows:
        for reason, col in reasons:
            why[reason] += int(r[col])
    print("stall reasons:", ", ".join(f"{k} {100 * v / sampled:.1f}%" for k, v in why.most_common(8)))

    print("SASS lines    samples  instr/warp  HMMA/warp  last instruction")
    start, s, n, mma = 0, 0, 0, 0
    for i, r in enumerate(rows):
        s += int(r[samples])
        n += int(r[executed])
        if "HMMA" in r[1]:
            mma += int(r[executed])
        if "BAR.SYNC" in r[1] or "BAR.ARV" in r[1] or i == len(rows) - 1 or i - start + 1 >= args.range:
            print(f"{start:5d}-{i:5d}  {100 * s / sampled:5.1f}%  {n / warps:10.1f}  {mma / warps:9.1f}  {r[1].strip()[:40]}")
            start, s, n, mma = i + 1, 0, 0, 0

    print(f"instructions with >= {args.hot}% of the samples: line, SASS, executions per warp, share, reasons")
    for i, r in enumerate(rows):
        if int(r[samples]) >= args.hot / 100 * sampled:
            top = sorted(((int(r[col]), reason) for reason, col in reasons), reverse=True)[:2]
            print(f"{i:5d}  {r[1].strip()[:60]:<60} {int(r[executed]) / warps:7.1f}  "
                  f"{100 * int(r[samples]) / sampled:5.2f}%  " + ", ".join(f"{k} {v}" for v, k in top))
    print()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", help="ncu --page source --print-source sass --csv output (.gz allowed)")
    p.add_argument("--kernel", default="", help="only kernels whose name contains this")
    p.add_argument("--hot", type=float, default=0.5, help="percent of the samples that makes an instruction hot")
    p.add_argument("--range", type=int, default=300, help="longest range of SASS lines between barriers")
    p.add_argument("--opcodes", type=int, default=20, help="opcodes listed")
    args = p.parse_args()
    opener = gzip.open if args.csv.endswith(".gz") else open
    with opener(args.csv, "rt", errors="replace") as f:
        text = f.read()
    found = [k for k in kernels(text) if args.kernel in k[0]]
    if not found:
        sys.exit(f"source_counters.py: no kernel matching '{args.kernel}' in {args.csv}")
    for name, header, rows in found:
        report(name, header, rows, args)


if __name__ == "__main__":
    main()
