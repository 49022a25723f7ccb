#!/usr/bin/env python3
"""Accuracy of RACE against exact angular-kernel attention as P (planes) and L (tables) vary.

For generated q, k, v the exact target is computed in float64 with numpy:
    K(q, k) = (1 - theta(q, k) / pi)^P,   o_i = sum_j K(q_i, k_j) v_j / sum_j K(q_i, k_j)
and RACE's output comes from `racesp attention` (kernel normalisation, non-causal, on the CPU)
over the same inputs written to HDF5. RACE's kernel (1/L) sum_l phi_l(q) . phi_l(k) tends to
K(q, k) for large beta (hard hashing) and large L, so the error should fall like 1/sqrt(L) at
large beta and level off at the soft-hash bias at beta = 1.

Two input families, B=1, T tokens, H heads (each head its own random planes: H independent
estimates), head dimension D:
  iid        q, k, v standard normal (as `racesp generate` writes)
  clustered  8 cluster centres c (standard normal); a token of cluster g has
             q, k = c_g + 0.3 noise and v = m_g + 0.3 noise (m_g standard normal): attention that
             mostly reads the values of the query's own cluster
Error: relative Frobenius error ||o_race - o_exact|| / ||o_exact|| over all tokens and heads (and
per head). One JSON line per (family, beta, P, L) in experiments/results/<name>/accuracy.jsonl,
machine.txt beside it. Needs numpy and h5py.

  experiments/accuracy.py --racesp build/release/src/cli/racesp            # about a minute on 2 cores
  experiments/accuracy.py --planes-list 4 --tables-list 1,4,16 --betas 16  # a smaller grid
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def ints(text):
    return [int(x) for x in text.split(",") if x]


def floats(text):
    return [float(x) for x in text.split(",") if x]


def make_inputs(family, tokens, heads, dim, seed):
    rng = np.random.default_rng(seed)
    shape = (1, tokens, heads, dim)
    if family == "iid":
        return [rng.standard_normal(shape) for _ in range(3)]
    groups = 8
    centre = rng.standard_normal((groups, heads, dim))
    mean_v = rng.standard_normal((groups, heads, dim))
    g = rng.integers(0, groups, size=tokens)
    q = centre[g][None] + 0.3 * rng.standard_normal(shape)
    k = centre[g][None] + 0.3 * rng.standard_normal(shape)
    v = mean_v[g][None] + 0.3 * rng.standard_normal(shape)
    return [q, k, v]


def exact_angular(q, k, v, planes):
    """float64 exact attention under (1 - theta/pi)^P, non-causal: [1, T, H, D]."""
    out = np.empty_like(q)
    for h in range(q.shape[2]):
        qh = q[0, :, h] / np.linalg.norm(q[0, :, h], axis=1, keepdims=True)
        kh = k[0, :, h] / np.linalg.norm(k[0, :, h], axis=1, keepdims=True)
        theta = np.arccos(np.clip(qh @ kh.T, -1.0, 1.0))
        kern = (1.0 - theta / np.pi) ** planes
        out[0, :, h] = (kern @ v[0, :, h]) / kern.sum(axis=1, keepdims=True)
    return out


def run_racesp(racesp, inp, out, planes, tables, beta, seed):
    cmd = [racesp, "attention", "--input", inp, "--output", out, "--overwrite", "--quiet",
           "--planes", str(planes), "--tables", str(tables), "--beta", str(beta), "--seed", str(seed)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    with h5py.File(out, "r") as f:
        return f["o"][...].astype(np.float64)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--racesp", default=None, help="the racesp binary (default: build/release, else build/exp)")
    p.add_argument("--name", default="cpu-accuracy", help="results folder under experiments/results")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--planes-list", type=ints, default=ints("1,2,4,6,8"))
    p.add_argument("--tables-list", type=ints, default=ints("1,2,4,8,16,32,64"))
    p.add_argument("--betas", type=floats, default=floats("1,16"))
    p.add_argument("--families", default="iid,clustered")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    racesp = args.racesp
    if racesp is None:
        for c in ("build/release/src/cli/racesp", "build/exp/src/cli/racesp"):
            if (ROOT / c).exists():
                racesp = str(ROOT / c)
                break
    if racesp is None or not Path(racesp).exists():
        sys.exit("accuracy.py: racesp binary not found: build it or pass --racesp")
    version = subprocess.run([racesp, "--version"], capture_output=True, text=True).stdout.strip()
    out_dir = ROOT / "experiments" / "results" / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    (out_dir / "machine.txt").write_text(
        f"hostname: {socket.gethostname()}\ncommand: {' '.join(sys.argv)}\nracesp --version: {version}\n"
        f"git: {subprocess.run(['git', '-C', str(ROOT), 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()}\n"
        f"numpy: {np.__version__}, h5py: {h5py.__version__}\n\n== lscpu\n{lscpu}")
    results = out_dir / "accuracy.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)))
    os.environ.update(env)
    with tempfile.TemporaryDirectory() as tmp, open(results, "w") as log:
        for family in args.families.split(","):
            q, k, v = make_inputs(family, args.tokens, args.heads, args.dim, args.seed)
            inp = os.path.join(tmp, f"{family}.h5")
            with h5py.File(inp, "w") as f:
                for name, x in (("q", q), ("k", k), ("v", v)):
                    f[name] = x.astype(np.float32)
            q, k, v = (x.astype(np.float32).astype(np.float64) for x in (q, k, v))  # what racesp reads
            for planes in args.planes_list:
                exact = exact_angular(q, k, v, planes)
                for beta in args.betas:
                    for tables in args.tables_list:
                        o = run_racesp(racesp, inp, os.path.join(tmp, "o.h5"), planes, tables, beta, args.seed)
                        diff = o - exact
                        per_head = [float(np.linalg.norm(diff[0, :, h]) / np.linalg.norm(exact[0, :, h]))
                                    for h in range(args.heads)]
                        line = {"study": "accuracy", "family": family, "planes": planes, "tables": tables,
                                "beta": beta, "normalization": "kernel", "causal": False, "tokens": args.tokens,
                                "heads": args.heads, "dim": args.dim, "seed": args.seed,
                                "rel_error": float(np.linalg.norm(diff) / np.linalg.norm(exact)),
                                "rel_error_per_head": per_head,
                                "max_abs_error": float(np.abs(diff).max()),
                                "exact_rms": float(np.sqrt((exact ** 2).mean())),
                                "racesp_version": version, "host": socket.gethostname()}
                        log.write(json.dumps(line) + "\n")
                        log.flush()
                        print(f"{family:9s} beta={beta:g} P={planes} L={tables:3d} rel_error={line['rel_error']:.4f}",
                              file=sys.stderr)
    print(f"accuracy.py: results in {results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
