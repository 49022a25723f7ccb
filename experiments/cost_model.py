#!/usr/bin/env python3
"""Communication cost model of RaceSP's sequence parallelism, fitted to measured collective times.

One forward + backward step moves 3 state collectives over the sequence-parallel group (causal:
exclusive scan of S in the forward, of S again and reverse scan of U in the backward; non-causal:
3 allreduces) plus one scalar allreduce (dbeta); 2 where the backward reuses the forward's key
totals (racesp_cuda_bench from v7 on, "key_totals": "reused": latencies 2/3 of the tables'). A state is n = B * H * M * (D + 1) * 8 bytes
(M = L * 2^P features, float64), independent of the sequence length. For p ranks and a message
cost m(n) = alpha + n * beta:

  recursive-doubling scan (racesp's NCCL scan, DESIGN.md section 3): ceil(log2 p) rounds, each
      sends and receives n bytes:           latency 3 ceil(log2 p) m(n), bytes 3 ceil(log2 p) n
  allgather, then the prefix summed locally: every rank receives the other p - 1 states
      ring allgather:                        latency 3 (p - 1) m(n),      bytes 3 (p - 1) n
      recursive-doubling allgather:          latency 3 (ceil(log2 p) alpha + (p - 1) n beta)
      (and p * n bytes of memory per rank for the gathered states)
  ring (pipelined chain, rank r waits for r - 1): latency 3 (p - 1) m(n), bytes 3 n

Fits (least squares):
  GPU, NCCL over NVLink, 1..4 H200 (experiments/results/gpu-h200x4-scaling*.jsonl,
      gpu-h200x2-scaling-v3.jsonl, racesp_cuda_bench): these files have only collective_s, the
      step's collective time measured around each collective with device synchronisation, so it
      includes waiting for the slowest rank: an upper bound. At each rank count the smallest
      value over the files is used. All were measured at one state size (n = 264,192 B: H=4,
      M=64, D=128), so alpha and beta cannot be separated: the fit gives the cost of one
      scan round at that size, c = alpha + n beta, from causal runs: T(p) = t0 + 3 ceil(log2 p) c.
      Where results/*/collectives.jsonl from `run_study.py collectives --bench cuda` (several state
      sizes on 1 and p GPUs) exist, alpha and beta are fitted from them instead (fit_gpu_sizes).
  CPU, Open MPI shared memory on this machine (experiments/results/cpu-collectives/, racesp
      bench's collective_alone_s: the step's collectives alone after a barrier, several state
      sizes): at 2 ranks every collective is one exchange, T = t0 + 4 alpha + 3 n beta (the dbeta
      allreduce adds one alpha), fitted with relative weights; points more than 4x off the fit
      are dropped (and refitted until none is), and listed in the JSON with "dropped": true.

  experiments/cost_model.py                 # fits, prints the tables as Markdown, writes
                                            # experiments/results/cost-model/cost_model.json
  experiments/cost_model.py --self-test     # checks the formulas and the fitting on synthetic data
"""

import argparse
import glob
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
COLLECTIVES_PER_STEP = 3
RANKS = [2 ** i for i in range(13)]  # 1 .. 4096


def rounds(p):
    """Rounds of a recursive-doubling scan over p ranks."""
    return math.ceil(math.log2(p)) if p > 1 else 0


def model(p, n, alpha, beta):
    """Per-step latency (s) and bytes sent per rank for each algorithm; n bytes per state."""
    m = alpha + n * beta
    c = COLLECTIVES_PER_STEP
    r = rounds(p)
    return {
        "p": p,
        "rounds": r,
        "bytes_rd_scan": c * r * n,
        "bytes_allgather": c * (p - 1) * n,
        "bytes_ring": c * n if p > 1 else 0,
        "memory_allgather": p * n,
        "s_rd_scan": c * r * m,
        "s_allgather_ring": c * (p - 1) * m,
        "s_allgather_rd": c * (r * alpha + (p - 1) * n * beta),
        "s_ring": c * (p - 1) * m,
    }


def least_squares(rows, ys, weights=None):
    """Solves min sum w (x . row - y)^2 by the normal equations (small systems, no numpy)."""
    k = len(rows[0])
    w = weights or [1.0] * len(rows)
    a = [[sum(wi * r[i] * r[j] for r, wi in zip(rows, w)) for j in range(k)] for i in range(k)]
    b = [sum(wi * r[i] * y for r, y, wi in zip(rows, ys, w)) for i in range(k)]
    for col in range(k):  # Gauss-Jordan with partial pivoting
        piv = max(range(col, k), key=lambda i: abs(a[i][col]))
        a[col], a[piv] = a[piv], a[col]
        b[col], b[piv] = b[piv], b[col]
        for i in range(k):
            if i != col and a[col][col] != 0:
                f = a[i][col] / a[col][col]
                a[i] = [x - f * y for x, y in zip(a[i], a[col])]
                b[i] -= f * b[col]
    return [b[i] / a[i][i] for i in range(k)]


def read_jsonl(paths):
    out = []
    for path in paths:
        with open(path) as f:
            out += [dict(json.loads(l), _file=Path(path).name) for l in f if l.startswith("{")]
    return out


def fit_gpu(results):
    files = sorted(glob.glob(str(results / "gpu-h200x4-scaling*.jsonl"))) + \
        sorted(glob.glob(str(results / "gpu-h200x2-scaling-v3.jsonl")))
    lines = [d for d in read_jsonl(files) if d.get("bench") == "cuda_forward_backward"]
    if not lines:
        return None
    best = {}
    for d in lines:
        key = (d["ranks"], d["causal"])
        if key not in best or d["collective_s"] < best[key]["collective_s"]:
            best[key] = d
    causal = sorted((k[0], v) for k, v in best.items() if k[1])
    rows = [[1.0, COLLECTIVES_PER_STEP * rounds(p)] for p, _ in causal]
    ys = [d["collective_s"] for _, d in causal]
    t0, c = least_squares(rows, ys)
    n = {d["state_bytes"] if "state_bytes" in d else d["heads"] * d["tables"] * 2 ** d["planes"] * (d["dim"] + 1) * 8 * d["batch"]
         for _, d in causal}
    points = [{"ranks": p, "causal": True, "collective_s": d["collective_s"], "file": d["_file"],
               "fit_s": t0 + COLLECTIVES_PER_STEP * rounds(p) * c} for p, d in causal]
    points += [{"ranks": k[0], "causal": False, "collective_s": v["collective_s"], "file": v["_file"]}
               for k, v in sorted(best.items()) if not k[1]]
    fit = {"what": "NCCL over NVLink, 1-4 x H200 (racesp_cuda_bench collective_s; smallest over the files; upper bounds)",
           "files": [Path(f).name for f in files], "state_bytes": sorted(n)[0], "t0_s": t0,
           "round_s": c, "points": points}
    sizes = fit_gpu_sizes(results)
    if sizes:  # a collectives study over state sizes separates alpha from beta
        fit.update(sizes)
        fit["round_s"] = sizes["alpha_s"] + fit["state_bytes"] * sizes["beta_s_per_byte"]
    return fit


def state_bytes(d):
    return d.get("state_bytes") or d["batch"] * d["heads"] * d["tables"] * 2 ** d["planes"] * (d["dim"] + 1) * 8


def per_step(d):
    """State collectives in the measured step: 2 where the backward reused the key totals."""
    return 2 if d.get("key_totals") == "reused" else COLLECTIVES_PER_STEP


def gpu_collective_s(d):
    """The collectives alone after a barrier where the bench measured them, else collective_s."""
    return d.get("collective_alone_s", d["collective_s"])


def fit_gpu_sizes(results):
    """alpha and beta from `run_study.py collectives --bench cuda` (results/*/collectives.jsonl):
    causal steps at several state sizes n on p > 1 GPUs, less the 1-GPU time at the same n,
    fitted to 3 ceil(log2 p) (alpha + n beta). None without two sizes measured on 1 and p GPUs.
    Uses collective_alone_s (racesp_cuda_bench from this version on) where present."""
    lines = [d for d in read_jsonl(sorted(glob.glob(str(results / "*" / "collectives.jsonl"))))
             if d.get("bench") == "cuda_forward_backward" and d.get("causal")]
    one = {}
    for d in lines:
        if d["ranks"] == 1:
            one[state_bytes(d)] = min(gpu_collective_s(d), one.get(state_bytes(d), float("inf")))
    use = [d for d in lines if d["ranks"] > 1 and state_bytes(d) in one]
    if len({state_bytes(d) for d in use}) < 2:
        return None
    rows = [[per_step(d) * rounds(d["ranks"]), per_step(d) * rounds(d["ranks"]) * state_bytes(d)] for d in use]
    ys = [max(gpu_collective_s(d) - one[state_bytes(d)], 1e-9) for d in use]
    alpha, beta = least_squares(rows, ys, [1 / y ** 2 for y in ys])
    return {"alpha_s": alpha, "beta_s_per_byte": beta, "bandwidth_GBps": 1e-9 / beta if beta > 0 else None,
            "size_points": [{"ranks": d["ranks"], "state_bytes": state_bytes(d), "collective_s": gpu_collective_s(d),
                             "file": d["_file"]} for d in use],
            "what_sizes": "alpha, beta from collectives.jsonl (racesp_cuda_bench collective_alone_s, else "
                          "collective_s, over state sizes)"}


def fit_cpu(results):
    files = sorted(glob.glob(str(results / "cpu-collectives" / "*.jsonl")))
    lines = [d for d in read_jsonl(files) if "collective_alone_s" in d]
    one = [d["collective_alone_s"] for d in lines if d["sp_size"] == 1]
    two = [d for d in lines if d["sp_size"] == 2]
    if not two:
        return None
    t0 = sorted(one)[len(one) // 2] if one else 0.0
    rows = [[COLLECTIVES_PER_STEP + 1, COLLECTIVES_PER_STEP * d["state_bytes"]] for d in two]  # + the dbeta allreduce
    ys = [d["collective_alone_s"] - t0 for d in two]
    w = [1.0 / max(y, 1e-9) ** 2 for y in ys]
    keep = list(range(len(two)))
    for _ in range(10):  # refit without the points more than 4x off the fit until none is
        alpha, beta = least_squares([rows[i] for i in keep], [ys[i] for i in keep], [w[i] for i in keep])
        now = [i for i in keep if 0.25 <= (rows[i][0] * alpha + rows[i][1] * beta) / max(ys[i], 1e-12) <= 4.0]
        if now == keep or len(now) < 2:
            break
        keep = now
    if alpha < 0:  # no negative latency: a line through t0 (alpha = 0), beta refitted
        alpha = 0.0
        beta = sum(w[i] * rows[i][1] * ys[i] for i in keep) / sum(w[i] * rows[i][1] ** 2 for i in keep)
    dropped = [two[i] for i in range(len(two)) if i not in keep]
    host = two[0].get("machine", {})
    points = [{"ranks": 2, "causal": d["causal"], "state_bytes": d["state_bytes"], "collective_alone_s": d["collective_alone_s"],
               "fit_s": t0 + (COLLECTIVES_PER_STEP + 1) * alpha + COLLECTIVES_PER_STEP * d["state_bytes"] * beta,
               "dropped": d in dropped} for d in two]
    return {"what": f"Open MPI shared memory, 2 ranks on one host ({host.get('cpu', '?')}, {host.get('cores_on_host', '?')} cores, "
                    f"host {host.get('host', '?')}; racesp bench collective_alone_s)",
            "files": [str(Path(f).relative_to(results)) for f in files], "t0_s": t0, "alpha_s": alpha,
            "beta_s_per_byte": beta, "bandwidth_GBps": (1e-9 / beta) if beta > 0 else None, "points": points}


def fmt_bytes(b):
    for unit, s in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= s:
            return f"{b / s:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_s(s):
    if s == 0:
        return "0"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def newest_step(results):
    """(seconds, file) of the causal 8M-token forward + backward on one GPU from the newest kernel
    version's results/gpu-h200-vN.jsonl (kernel normalisation), or (1.0, "none found")."""
    def version(path):
        m = re.search(r"-v(\d+)", path.name)
        return int(m.group(1)) if m else 1
    for path in sorted(results.glob("gpu-h200*.jsonl"), key=version, reverse=True):
        for d in read_jsonl([path]):
            if (d.get("ranks") == 1 and d.get("causal") and d.get("tokens") == 8388608
                    and d.get("normalization", "kernel") == "kernel" and "median_s" in d):
                return d["median_s"], path.name
    return 1.0, "none found"


def markdown(gpu, cpu, step_s):
    out = []
    if gpu:
        n = gpu["state_bytes"]
        c = gpu["round_s"]
        if "alpha_s" in gpu:
            out.append(f"GPU fit (NCCL, {gpu['what_sizes']}): alpha = {fmt_s(gpu['alpha_s'])}, beta = "
                       f"{gpu['beta_s_per_byte']:.3g} s/B ({gpu['bandwidth_GBps']:.3g} GB/s), from "
                       f"{len(gpu['size_points'])} points over state sizes; one scan round at n = {n:,} B: "
                       f"c = alpha + n beta = {fmt_s(c)}. (The step-level collective_s of the scaling files, "
                       f"which include waiting for the slowest rank, fit t0 = {fmt_s(gpu['t0_s'])} and a larger c: "
                       f"upper bounds.)\n")
        else:
            out.append(f"GPU fit ({gpu['what']}): t0 = {fmt_s(gpu['t0_s'])}, one scan round at n = {n:,} B: "
                       f"c = alpha + n beta = {fmt_s(c)}.\n")
        out.append("| p | rounds | bytes/rank/step: RD scan | allgather | ring | latency/step: RD scan | "
                   "allgather (ring) | ring | RD scan / step time |")
        out.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for p in RANKS:
            r = model(p, n, c, 0.0)  # per-message cost c (the same whether or not alpha, beta are known)
            out.append(f"| {p} | {r['rounds']} | {fmt_bytes(r['bytes_rd_scan'])} | {fmt_bytes(r['bytes_allgather'])} | "
                       f"{fmt_bytes(r['bytes_ring'])} | {fmt_s(r['s_rd_scan'])} | {fmt_s(r['s_allgather_ring'])} | "
                       f"{fmt_s(r['s_ring'])} | {100 * r['s_rd_scan'] / step_s[0]:.2g}% |")
        out.append(f"\n(step time: {step_s[0]:.3g} s, the measured causal forward + backward at 8M tokens on one "
                   f"H200, {step_s[1]})\n")
    if cpu:
        n = gpu["state_bytes"] if gpu else 264192
        a, b = cpu["alpha_s"], cpu["beta_s_per_byte"]
        out.append(f"CPU fit ({cpu['what']}): alpha = {fmt_s(a)}, beta = {b:.3g} s/B "
                   f"({cpu['bandwidth_GBps']:.3g} GB/s), t0 = {fmt_s(cpu['t0_s'])}; "
                   f"{sum(pt['dropped'] for pt in cpu['points'])} of {len(cpu['points'])} points dropped as outliers.\n")
        out.append(f"| p | latency/step at n = {n:,} B: RD scan | allgather (ring) | allgather (RD) | ring |")
        out.append("| ---: | ---: | ---: | ---: | ---: |")
        for p in RANKS:
            r = model(p, n, a, b)
            out.append(f"| {p} | {fmt_s(r['s_rd_scan'])} | {fmt_s(r['s_allgather_ring'])} | "
                       f"{fmt_s(r['s_allgather_rd'])} | {fmt_s(r['s_ring'])} |")
    return "\n".join(out)


def self_test():
    """The formulas at known points and the fits on synthetic data."""
    r = model(1, 1000, 1e-6, 1e-9)
    assert r["s_rd_scan"] == 0 and r["s_ring"] == 0 and r["bytes_allgather"] == 0
    assert [rounds(p) for p in (1, 2, 3, 4, 5, 8, 4096)] == [0, 1, 2, 2, 3, 3, 12]
    r = model(4096, 1000, 1e-6, 1e-9)
    assert r["bytes_rd_scan"] == 3 * 12 * 1000 and r["bytes_allgather"] == 3 * 4095 * 1000
    assert abs(r["s_ring"] - 3 * 4095 * 2e-6) < 1e-15
    alpha, beta = 5e-6, 2e-10
    rows = [[4, 3 * n] for n in (1e4, 1e5, 1e6, 4e6)]
    ys = [4 * alpha + 3 * n * beta for n in (1e4, 1e5, 1e6, 4e6)]
    fa, fb = least_squares(rows, ys, [1 / y ** 2 for y in ys])
    assert abs(fa - alpha) < 1e-12 and abs(fb - beta) < 1e-16, (fa, fb)
    t0, c = least_squares([[1, 3 * rounds(p)] for p in (1, 2, 4)], [1e-4 + 3 * rounds(p) * 2e-4 for p in (1, 2, 4)])
    assert abs(t0 - 1e-4) < 1e-12 and abs(c - 2e-4) < 1e-12
    print("cost_model self-test: OK")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--out", default=None, help="JSON output (default: <results>/cost-model/cost_model.json)")
    p.add_argument("--self-test", action="store_true")
    args = p.parse_args()
    if args.self_test:
        return self_test()
    results = Path(args.results)
    gpu, cpu = fit_gpu(results), fit_cpu(results)
    if not gpu and not cpu:
        sys.exit("cost_model.py: no collective measurements found under " + str(results))
    step_s = newest_step(results)
    table = markdown(gpu, cpu, step_s)
    print(table)
    out = Path(args.out) if args.out else results / "cost-model" / "cost_model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    n = gpu["state_bytes"] if gpu else 264192
    gpu_ab = (gpu["alpha_s"], gpu["beta_s_per_byte"]) if gpu and "alpha_s" in gpu else (gpu["round_s"] if gpu else 0, 0.0)
    rows = {"gpu": [model(q, n, *gpu_ab) for q in RANKS] if gpu else None,
            "cpu": [model(q, n, cpu["alpha_s"], cpu["beta_s_per_byte"]) for q in RANKS] if cpu else None}
    out.write_text(json.dumps({"gpu_fit": gpu, "cpu_fit": cpu, "step_s": step_s[0], "step_file": step_s[1], "state_bytes": n, "model": rows},
                              indent=1) + "\n")
    (out.parent / "cost_model.md").write_text(table + "\n")
    print(f"\ncost_model.py: wrote {out} and {out.parent / 'cost_model.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
