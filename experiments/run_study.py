#!/usr/bin/env python3
"""Drivers for RaceSP scaling studies: sweeps of `racesp bench` (or the device-resident
`racesp_cuda_bench`) collected as JSON lines under experiments/results/<name>/.

Studies (each a list of bench invocations; every list can be changed on the command line):

  seqlen       sequence length sweep: --tokens T for each T in --tokens-list, for each rank count
               in --ranks (strong scaling at every length), causal and non-causal (--both)
  weak         weak scaling: --tokens-per-rank N for each rank count in --ranks
  strong       strong scaling: one --tokens N for each rank count in --ranks
  pl           hash configuration: every (P, L) in --planes-list x --tables-list at one length
  collectives  collective latency against state size: --heads-list at a small length for each
               rank count (the fields collective_alone_s and state_bytes feed cost_model.py)

Benches (--bench):

  racesp       `racesp bench --device cpu|cuda` (cpu: float32 tensors in host memory; cuda: the
               same device-resident timings as racesp_cuda_bench, bf16 by default, NCCL)
  cuda         `racesp_cuda_bench` (src/cuda/cuda_bench.cpp): tensors resident on the GPU, bf16 by
               default, NCCL collectives, every engine option; the program behind
               experiments/results/gpu-*.jsonl

Launchers (--launcher):

  local        `mpirun -np R` on this machine, one line per configuration appended to
               results/<name>/<study>.jsonl as soon as it finishes
  slurm        `sbatch --wait jobs/scaling-sweep.sbatch` (racesp bench only), one job array per
               configuration of the non-token options; the sweep's JSON lines are copied into
               results/<name>/<study>.jsonl afterwards

Every line gets the fields study, bench_program, launcher and run_ranks in front of what the
bench printed; results/<name>/machine.txt (appended to by each run) records hostname, lscpu, nvidia-smi, racesp --version,
the git commit and the date. Options after -- go to the bench unchanged. --dry-run prints the commands without running anything.

Examples (from the repository root):

  # CPU, this machine: sequence length 16K..256K on 1 and 2 ranks
  experiments/run_study.py seqlen --name cpu-seqlen --ranks 1,2 \\
      --tokens-list 16384,65536,262144 --heads 4 --dim 64 --repeats 2

  # one H200: device-resident bench, 1M..16M tokens, bf16
  experiments/run_study.py seqlen --bench cuda --name gpu-h200-seqlen --ranks 1 \\
      --tokens-list 1048576,2097152,4194304,8388608,16777216 --heads 4 --dim 128

  # 4 H200s: weak (8M per GPU) and strong (32M) scaling
  experiments/run_study.py weak --bench cuda --name gpu-h200x4-weak --ranks 1,2,4 --tokens 8388608
  experiments/run_study.py strong --bench cuda --name gpu-h200x4-strong --ranks 1,2,4 --tokens 33554432

  # a SLURM cluster: weak scaling over 1..32 CPU ranks through jobs/scaling-sweep.sbatch
  experiments/run_study.py weak --launcher slurm --name cpu-cluster-weak --ranks 1,2,4,8,16,32 \\
      --tokens 1048576 --sbatch-args="--nodes=4 --cpus-per-task=4"
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
STUDIES = ("seqlen", "weak", "strong", "pl", "collectives")


def int_list(text):
    """'1,2,4' or '1 2 4' -> [1, 2, 4]."""
    return [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]


def default_binary(bench, device):
    """The binary a study runs unless --binary says otherwise."""
    candidates = []
    if bench == "cuda":
        candidates = ["build/gpu/src/cuda/racesp_cuda_bench", "build-gpu/src/cuda/racesp_cuda_bench"]
    elif device == "cuda":
        candidates = ["build/gpu/src/cli/racesp", "build-gpu/src/cli/racesp"]
    candidates += ["build/release/src/cli/racesp", "build/exp/src/cli/racesp"]
    for c in candidates:
        if (ROOT / c).exists() and (bench != "cuda" or "cuda_bench" in c):
            return str(ROOT / c)
    return str(ROOT / candidates[0])


def configurations(args):
    """The study as a list of (ranks, options) pairs; options are racesp bench's spelling."""
    common = {"batch": args.batch, "heads": args.heads, "dim": args.dim, "planes": args.planes,
              "tables": args.tables, "repeats": args.repeats, "warmup": args.warmup}
    configs = []
    if args.study == "seqlen":
        for r in args.ranks:
            for t in args.tokens_list:
                configs.append((r, dict(common, tokens=t)))
    elif args.study == "weak":
        for r in args.ranks:
            configs.append((r, dict(common, tokens_per_rank=args.tokens)))
    elif args.study == "strong":
        for r in args.ranks:
            configs.append((r, dict(common, tokens=args.tokens)))
    elif args.study == "pl":
        for r in args.ranks:
            for p in args.planes_list:
                for l in args.tables_list:
                    configs.append((r, dict(common, tokens=args.tokens, planes=p, tables=l)))
    elif args.study == "collectives":
        for r in args.ranks:
            for h in args.heads_list:
                configs.append((r, dict(common, heads=h, tokens_per_rank=args.tokens)))
    return configs


def bench_command(args, ranks, opts):
    """The bench's own argument list (without the launcher)."""
    if args.bench == "racesp":
        cmd = [args.binary, "bench", "--device", args.device]
        for key in ("tokens", "tokens_per_rank", "batch", "heads", "dim", "planes", "tables", "repeats", "warmup"):
            if key in opts:
                cmd += ["--" + key.replace("_", "-"), str(opts[key])]
        cmd += ["--causal"] if args.mode == "causal" else ([] if args.mode == "full" else ["--both"])
        if args.normalization:
            cmd += ["--normalization", args.normalization]
    else:
        cmd = [args.binary]
        if "tokens_per_rank" in opts:
            cmd += ["--tokens-per-rank", str(opts["tokens_per_rank"])]
        else:
            cmd += ["--tokens", str(opts["tokens"])]
        for key in ("batch", "heads", "dim", "planes", "tables"):
            cmd += ["--" + key, str(opts[key])]
        cmd += ["--runs", str(opts["repeats"]), "--warmup", str(opts["warmup"]),
                "--mode", args.mode, "--dtype", args.dtype]
        if args.normalization:
            cmd += ["--normalization", args.normalization]
    return cmd + args.extra


def local_launch(args, ranks):
    """mpirun in front of a local run; threads per rank share this machine's cores."""
    cores = os.cpu_count() or 1
    cmd = ["mpirun", "-np", str(ranks), "--bind-to", "none"]
    if ranks > cores:
        cmd.append("--oversubscribe")
    for var in ("OMP_NUM_THREADS", "NCCL_NVLS_ENABLE"):
        cmd += ["-x", var]
    return cmd


def run_env(args, ranks):
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    elif args.device == "cpu" and args.bench == "racesp":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // ranks))
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off on shared hosts (gpu-notes.md)
    if os.getuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def tag(line, args, ranks):
    """The study's fields first, then the bench's JSON object."""
    d = json.loads(line)
    front = {"study": args.study, "bench_program": "racesp_cuda_bench" if args.bench == "cuda" else "racesp bench",
             "launcher": args.launcher, "run_ranks": ranks}
    if args.bench == "cuda":
        front["device"] = "cuda"
    front.update(d)
    return json.dumps(front, sort_keys=False)


def capture(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def write_machine(out_dir, args):
    """Who ran the study and on what: hostname, CPU, GPUs, racesp version, commit, date."""
    parts = [
        "date: " + datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname: " + socket.gethostname(),
        "platform: " + platform.platform(),
        "command: " + " ".join(shlex.quote(a) for a in sys.argv),
        "git: " + capture(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "binary: " + args.binary,
    ]
    if args.bench == "racesp":
        parts.append("racesp --version: " + capture([args.binary, "--version"]))
    mpi = capture(["mpirun", "--version"]).splitlines()
    parts.append("mpirun --version: " + (mpi[0] if mpi else "not found"))
    parts.append("\n== lscpu\n" + capture(["lscpu"]))
    parts.append("\n== free -g\n" + capture(["free", "-g"]))
    if shutil.which("nvidia-smi"):
        parts.append("\n== nvidia-smi\n" + capture(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                                     "--format=csv"]))
        parts.append("\n== nvidia-smi topo -m\n" + capture(["nvidia-smi", "topo", "-m"]))
    # Appended: a folder filled by several runs keeps every run's description.
    with open(out_dir / "machine.txt", "a") as f:
        f.write("\n".join(parts) + "\n\n")


def run_local(args, configs, out_file):
    failures = 0
    for ranks, opts in configs:
        cmd = local_launch(args, ranks) + bench_command(args, ranks, opts)
        print("+ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
        if args.dry_run:
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env(args, ranks))
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        with open(out_file, "a") as f:
            for l in lines:
                f.write(tag(l, args, ranks) + "\n")
        if proc.returncode != 0 or not lines:
            failures += 1
            err = proc.stderr.strip().splitlines()
            print(f"run_study: failed ({proc.returncode}): {err[-1] if err else 'no output'}", file=sys.stderr)
            if args.stop_at_failure:
                print("run_study: stopping at the first failure (--stop-at-failure)", file=sys.stderr)
                break
        for l in lines:
            d = json.loads(l)
            print(f"  ranks={ranks} tokens={d['tokens']} causal={d['causal']} median={d['median_s']:.4g}s "
                  f"tokens/s={d['tokens_per_s']:.4g}", file=sys.stderr)
    return failures


def run_slurm(args, configs, out_file):
    """One `sbatch --wait` of jobs/scaling-sweep.sbatch per group of configurations that differ
    only in tokens and ranks; its JSON lines are appended to out_file."""
    if args.bench != "racesp":
        sys.exit("run_study: --launcher slurm runs racesp bench (jobs/scaling-sweep.sbatch); use --bench racesp")
    groups = {}
    for ranks, opts in configs:
        weak = "tokens_per_rank" in opts
        t = opts["tokens_per_rank"] if weak else opts["tokens"]
        rest = tuple(sorted((k, v) for k, v in opts.items() if k not in ("tokens", "tokens_per_rank")))
        g = groups.setdefault((weak, rest), {"ranks": [], "tokens": []})
        if ranks not in g["ranks"]:
            g["ranks"].append(ranks)
        if t not in g["tokens"]:
            g["tokens"].append(t)
    failures = 0
    for (weak, rest), g in groups.items():
        opts = dict(rest)
        bench_args = [a for a in bench_command(args, 1, dict(opts, tokens=1))[2:]]
        # scaling-sweep.sbatch sets --device and --tokens itself.
        drop = {"--device", "--tokens"}
        cleaned, skip = [], False
        for a in bench_args:
            if skip:
                skip = False
                continue
            if a in drop:
                skip = True
                continue
            cleaned.append(a)
        n = len(g["ranks"]) * len(g["tokens"])
        env = run_env(args, 1)
        env.update({"RANKS_LIST": " ".join(map(str, g["ranks"])), "TOKENS_LIST": " ".join(map(str, g["tokens"])),
                    "SCALING": "weak" if weak else "strong", "DEVICE": args.device, "RACESP_BIN": args.binary})
        if not args.threads:
            env.pop("OMP_NUM_THREADS", None)  # the sweep script takes --cpus-per-task
        # SLURM's own log goes next to the results, not into the checkout.
        log = Path(out_file).parent / "slurm-%A_%a.out"
        cmd = (["sbatch", "--wait", "--parsable", f"--array=0-{n - 1}", f"--ntasks={max(g['ranks'])}",
                f"--job-name=racesp-{args.study}", f"--output={log}"] + shlex.split(args.sbatch_args) +
               [str(ROOT / "jobs" / "scaling-sweep.sbatch")] + cleaned)
        shown = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("RANKS_LIST", "TOKENS_LIST", "SCALING", "DEVICE"))
        print("+ " + shown + " " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
        if args.dry_run:
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        job = proc.stdout.strip().split(";")[0].splitlines()[-1] if proc.stdout.strip() else ""
        if proc.returncode != 0:
            failures += 1
            print(f"run_study: sbatch ended with {proc.returncode}: {proc.stderr.strip()}", file=sys.stderr)
        runs_dir = Path(env.get("RUNS_DIR", ROOT / "runs")) / f"racesp-{args.study}-{job}"
        found = sorted(runs_dir.glob("*.jsonl")) if job else []
        if not found:
            failures += 1
            print(f"run_study: no JSON lines in {runs_dir}", file=sys.stderr)
        with open(out_file, "a") as f:
            for p in found:
                for l in p.read_text().splitlines():
                    if l.startswith("{"):
                        d = json.loads(l)
                        f.write(tag(l, args, d.get("sweep_ranks", 0)) + "\n")
    return failures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("study", choices=STUDIES)
    p.add_argument("--name", help="results folder under experiments/results (default: <device>-<study>)")
    p.add_argument("--results", default=str(RESULTS), help="parent folder of the results (default: %(default)s)")
    p.add_argument("--bench", choices=("racesp", "cuda"), default="racesp")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="racesp bench --device (default cpu; cuda with --bench cuda)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--binary", help="racesp or racesp_cuda_bench (default: the first built one under build/)")
    p.add_argument("--ranks", type=int_list, default=[1], help="rank counts, e.g. 1,2,4 (default 1)")
    p.add_argument("--tokens", type=int, default=1 << 20,
                   help="weak/collectives: tokens per rank; strong/pl: tokens (default 1048576)")
    p.add_argument("--tokens-list", type=int_list, default=int_list("16384,65536,262144"), help="seqlen: lengths")
    p.add_argument("--planes-list", type=int_list, default=int_list("1,2,4,6,8"), help="pl: values of P")
    p.add_argument("--tables-list", type=int_list, default=int_list("1,2,4,8,16"), help="pl: values of L")
    p.add_argument("--heads-list", type=int_list, default=int_list("1,4,16,64"), help="collectives: values of H")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--planes", type=int, default=4)
    p.add_argument("--tables", type=int, default=4)
    p.add_argument("--mode", choices=("both", "causal", "full"), default="both", help="causal, non-causal (full) or both")
    p.add_argument("--normalization", choices=("kernel", "bucket"), default=None)
    p.add_argument("--dtype", default="bf16", help="--bench cuda: fp32|bf16|fp16 (default bf16)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per rank (default: cores / ranks on CPU)")
    p.add_argument("--sbatch-args", default="", help="more sbatch options for --launcher slurm, e.g. '--nodes=4 --gpus-per-node=4'")
    p.add_argument("--stop-at-failure", action="store_true",
                   help="stop at the first failing run (seqlen: the first length that does not fit)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = p.parse_args(argv)
    args.extra = extra  # after --: more options for the bench, unchanged
    if args.device is None:
        args.device = "cuda" if args.bench == "cuda" else "cpu"
    if args.bench == "cuda" and args.device != "cuda":
        p.error("--bench cuda runs on the GPU: leave --device out or set it to cuda")
    args.binary = args.binary or default_binary(args.bench, args.device)
    name = args.name or f"{args.device}-{args.study}"
    out_dir = Path(args.results) / name
    out_file = out_dir / f"{args.study}.jsonl"
    configs = configurations(args)
    if not args.dry_run:
        if not Path(args.binary).exists():
            sys.exit(f"run_study: {args.binary} not found: build it or pass --binary")
        out_dir.mkdir(parents=True, exist_ok=True)
        write_machine(out_dir, args)
    runner = run_local if args.launcher == "local" else run_slurm
    failures = runner(args, configs, out_file)
    if not args.dry_run:
        print(f"run_study: {len(configs)} configurations, {failures} failed; results in {out_file}", file=sys.stderr)
    # A seqlen study that steps up until memory runs out ends with a failure on purpose.
    return 1 if failures and not args.stop_at_failure else 0


if __name__ == "__main__":
    sys.exit(main())
