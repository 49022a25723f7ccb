#!/usr/bin/env python3
"""Plots of every result under experiments/results (matplotlib), written as PNGs next to them.

  experiments/plot.py                # all plots; prints the files it wrote
  experiments/plot.py --only seqlen  # one kind: seqlen, memory, scaling, accuracy, cost

What is read (every *.jsonl under experiments/results, recursively) and drawn:
  seqlen    time and tokens/s of one forward + backward against sequence length, log-log, one
            line per method (racesp bench on CPU ranks, racesp_cuda_bench by kernel version,
            the PyTorch RACE program, exact softmax through scaled_dot_product_attention),
            causal and not, per rank count: results/seqlen-gpu.png (GPUs; of the single-point
            gpu-*.jsonl kernel versions only the newest) and results/seqlen-cpu.png, and per
            folder results/<folder>/seqlen.png
  memory    peak memory against sequence length (peak_rss_bytes per rank on CPUs,
            peak_device_bytes on GPUs): results/memory-gpu.png and results/memory-cpu.png
  scaling   weak-scaling efficiency T(1)/T(p) (lines with a fixed tokens_per_rank) and
            strong-scaling efficiency T(1)/(p T(p)) (a fixed total length) against ranks:
            results/scaling-all.png
  accuracy  relative error of RACE against exact angular-kernel attention against L, one line
            per P, per input family and beta (results/cpu-accuracy/accuracy.jsonl from
            accuracy.py): results/cpu-accuracy/accuracy.png
  cost      modelled collective latency per step against ranks, recursive-doubling scan vs
            allgather vs ring, with the measured points (results/cost-model/cost_model.json from
            cost_model.py): results/cost-model/cost_model.png

Every line in a plot is labelled with the machine it ran on (GPU name, or CPU model and cores).
"""

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
DPI = 90


def gpu_version(name):
    """Kernel version of the committed racesp_cuda_bench files (gpu-notes.md): "-vN" in the name, else v1."""
    m = re.search(r"-v(\d+)", name)
    return f"v{m.group(1)}" if m else "v1"


def record(d, path, results):
    """One JSON line -> a flat record with the fields the plots use, or None."""
    if "median_s" not in d and not d.get("oom"):
        return None
    rel = path.relative_to(results)
    folder = str(rel.parent) if str(rel.parent) != "." else rel.stem
    if d.get("bench", "").startswith("cuda_"):
        # the committed gpu-*.jsonl in results/ are by kernel version; newer runs by their folder,
        # whose name carries the version where it has one (h200-seqlen-v10, h200x4-v11-weak)
        if path.parent == results:
            version = gpu_version(path.name)
        else:
            m = re.search(r"-v(\d+)", rel.parts[0])
            version = f"v{m.group(1)}" if m else ""
        method = f"racesp_cuda_bench {version} {d.get('dtype', '')}".replace("  ", " ")
        if d.get("normalization", "kernel") != "kernel":
            method += f" {d['normalization']} normalization"
        if d.get("bench") == "cuda_max_tokens":
            method += " (longest fit)"
        machine = d.get("gpu", "GPU")
        memory = d.get("peak_device_bytes")
    elif d.get("command") == "bench":
        method = f"racesp bench ({d.get('device', 'cpu')})"
        m = d.get("machine", {})
        machine = m.get("gpu") or f"{m.get('cpu', 'CPU')} {m.get('cores_on_host', '?')} cores, {m.get('threads_per_rank', '?')} thr/rank"
        memory = d.get("peak_rss_bytes")
    elif d.get("command") in ("pytorch_race", "torch_sdpa"):
        m = d.get("machine", {})
        if d["command"] == "pytorch_race":
            method = f"PyTorch RACE P={d.get('planes')} L={d.get('tables')} {d.get('dtype', '')}"
        else:
            method = f"softmax SDPA ({d.get('backend')}) {d.get('dtype', '')}"
        machine = m.get("gpu") or f"CPU {m.get('cores_on_host', '?')} cores"
        memory = d.get("peak_device_bytes") or d.get("peak_rss_bytes")
    else:
        return None
    ranks = d.get("run_ranks") or d.get("ranks") or d.get("sp_size", 1)
    if isinstance(ranks, dict):
        ranks = 1
    return {"folder": folder, "method": method, "machine": machine, "causal": bool(d.get("causal")),
            "ranks": int(ranks), "tokens": int(d["tokens"]), "tokens_per_rank": float(d.get("tokens_per_rank", d["tokens"])),
            "median_s": d.get("median_s"), "min_s": d.get("min_s"), "max_s": d.get("max_s"), "tokens_per_s": d.get("tokens_per_s"), "memory": memory,
            "oom": bool(d.get("oom")), "study": d.get("study", ""), "heads": d.get("heads"), "dim": d.get("dim"),
            "planes": d.get("planes"), "tables": d.get("tables"), "file": str(rel)}


def load(results):
    out = []
    for path in sorted(results.rglob("*.jsonl")):
        if path.parent.name in ("cpu-accuracy", "cost-model"):
            continue
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                r = record(json.loads(line), path, results)
                if r:
                    out.append(r)
    return out


def on_gpu(r):
    return "NVIDIA" in r["machine"] or r["machine"] == "GPU"


def newest_only(recs):
    """Drop the racesp_cuda_bench records of older kernel versions (gpu-v*.jsonl in results/)."""
    versions = {gpu_version(Path(r["file"]).name) for r in recs if "/" not in r["file"] and r["file"].startswith("gpu-")}
    newest = max(versions, key=lambda v: int(v[1:]), default="")
    return [r for r in recs if not ("/" not in r["file"] and r["file"].startswith("gpu-"))
            or gpu_version(Path(r["file"]).name) == newest]


def series_key(r):
    return (r["machine"], r["method"], r["causal"], r["ranks"], r["heads"], r["dim"])


def short_machine(machine):
    return (machine.replace("(R)", "").replace(" Processor", "").replace(" cores,", "c,").replace(" thr/rank", " thr/rank"))


def label(key):
    machine, method, causal, ranks, heads, dim = key
    return (f"{method}, {'causal' if causal else 'non-causal'}, {ranks} rank{'s' if ranks > 1 else ''}, "
            f"H={heads} D={dim} [{short_machine(machine)}]")


def style(key, i):
    return {"marker": "os^vD<>ph*"[i % 10], "linestyle": "-" if key[2] else "--",
            "color": plt.cm.tab20(i % 20)}


def finish(fig, handles_axes, title, n):
    """Legend on the right of the axes, outside them."""
    handles, labels = handles_axes.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.64 if n else 1, 0.95))


def plot_seqlen(recs, path, title):
    """One device per line (1 rank), plus the rank counts of seqlen studies."""
    groups, oom = defaultdict(list), {}
    for r in recs:
        if r["study"] in ("seqlen", "") and (r["ranks"] == 1 or r["study"] == "seqlen"):
            if r["oom"]:
                oom[series_key(r)] = min(r["tokens"], oom.get(series_key(r), r["tokens"]))
            elif r["median_s"]:
                groups[series_key(r)].append(r)
    if not groups:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(17, 6))
    for i, (key, rs) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        name = label(key) + (f", out of memory at {oom[key]:,}" if key in oom else "")
        best = {}
        for r in rs:  # one point per length: the latest measurement
            best[r["tokens"]] = r
        xs = sorted(best)
        st = style(key, i)
        ys = [best[x]["median_s"] for x in xs]
        lo = [y - (best[x]["min_s"] or y) for x, y in zip(xs, ys)]
        hi = [(best[x]["max_s"] or y) - y for x, y in zip(xs, ys)]
        axes[0].errorbar(xs, ys, yerr=[lo, hi], label=name, capsize=3, **st)
        axes[1].plot(xs, [best[x]["tokens_per_s"] for x in xs], **st)
    for ax, yl in zip(axes, ("forward + backward time (s): median, bars min..max", "tokens / s (median)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(yl)
        ax.grid(True, which="both", alpha=0.3)
    finish(fig, axes[0], title + " (solid: causal, dashed: non-causal)", len(groups))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_memory(recs, path, where):
    groups = defaultdict(list)
    for r in recs:
        if r["memory"] and not r["oom"] and r["study"] not in ("collectives", "pl"):
            groups[series_key(r)].append(r)
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(13, 6.5))
    for i, (key, rs) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        best = {r["tokens_per_rank"]: r for r in rs}
        xs = sorted(best)
        ax.plot(xs, [best[x]["memory"] / 2 ** 30 for x in xs], label=label(key), **style(key, i))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per rank")
    ax.set_ylabel("peak memory per rank (GiB): CPU resident set / GPU device memory in use")
    ax.grid(True, which="both", alpha=0.3)
    finish(fig, ax, f"Peak memory per rank against tokens per rank on {where}", len(groups))
    fig.tight_layout(rect=(0, 0, 0.55, 0.95))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_scaling(recs, path):
    """Weak: series with one tokens_per_rank over several rank counts; strong: one total length,
    against the fewest ranks it was measured on (p0)."""
    weak, strong = defaultdict(dict), defaultdict(dict)
    for r in recs:
        if not r["median_s"] or r["oom"] or "longest" in r["method"] or r["study"] in ("collectives", "pl"):
            continue
        base = (r["machine"], r["method"], r["causal"], r["heads"], r["dim"], r["file"])
        weak[base + (r["tokens_per_rank"],)][r["ranks"]] = r
        strong[base + (r["tokens"],)][r["ranks"]] = r
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    drawn = [0, 0]
    for ax, table, kind, idx in ((axes[0], weak, "weak", 0), (axes[1], strong, "strong", 1)):
        for i, (key, by_p) in enumerate(sorted(table.items(), key=lambda kv: str(kv[0]))):
            if len(by_p) < 2:
                continue
            # Against the fewest ranks measured: 1, or more where the length does not fit one rank.
            ps = sorted(by_p)
            p0, t0 = ps[0], by_p[ps[0]]["median_s"]
            if kind == "weak" and p0 != 1:
                continue
            eff = [t0 / by_p[p]["median_s"] if kind == "weak" else p0 * t0 / (p * by_p[p]["median_s"]) for p in ps]
            machine, method, causal, heads, dim, file, tokens = key
            what = f"{tokens:,.0f} tokens/rank" if kind == "weak" else \
                f"{tokens:,.0f} tokens" + (f", from {p0} ranks" if p0 != 1 else "")
            ax.plot(ps, eff, marker="os^vD<>"[i % 7], linestyle="-" if causal else "--",
                    label=f"{method}, {'causal' if causal else 'non-causal'}, {what} ({file})\n  [{machine}]")
            drawn[idx] += 1
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks (sequence-parallel)")
        ax.set_ylabel("weak efficiency T(1) / T(p)" if kind == "weak" else "strong efficiency p0 T(p0) / (p T(p))")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_ylim(0, 1.15)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{kind} scaling" + ("" if drawn[idx] else " (no results yet)"))
        if drawn[idx]:
            ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path if any(drawn) else None


def plot_accuracy(results):
    src = results / "cpu-accuracy" / "accuracy.jsonl"
    if not src.exists():
        return None
    rows = [json.loads(l) for l in src.read_text().splitlines() if l.startswith("{")]
    fams = sorted({r["family"] for r in rows})
    betas = sorted({r["beta"] for r in rows})
    fig, axes = plt.subplots(len(fams), len(betas), figsize=(6 * len(betas), 4.2 * len(fams)), squeeze=False, sharey=True)
    for fi, fam in enumerate(fams):
        for bi, beta in enumerate(betas):
            ax = axes[fi][bi]
            sel = [r for r in rows if r["family"] == fam and r["beta"] == beta]
            for i, p in enumerate(sorted({r["planes"] for r in sel})):
                pts = sorted((r["tables"], r["rel_error"]) for r in sel if r["planes"] == p)
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="os^vD<>"[i % 7], label=f"P={p}")
            ls = sorted({r["tables"] for r in sel})
            if ls:
                ref = sel[0]
                ax.plot(ls, [0.5 * ls[0] ** 0.5 / l ** 0.5 for l in ls], color="gray", lw=0.8, ls=":", label="∝ 1/√L")
                ax.set_title(f"{fam} inputs, β={beta:g} (T={ref['tokens']}, H={ref['heads']}, D={ref['dim']})", fontsize=9)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tables L")
            ax.set_ylabel("relative error vs exact (1-θ/π)^P attention")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    host = rows[0].get("host", "?") if rows else "?"
    fig.suptitle(f"RACE (racesp attention, CPU, kernel normalisation, non-causal) vs float64 exact angular-kernel "
                 f"attention [host {host}]", fontsize=10)
    fig.tight_layout()
    out = results / "cpu-accuracy" / "accuracy.png"
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def plot_cost(results):
    src = results / "cost-model" / "cost_model.json"
    if not src.exists():
        return None
    cm = json.loads(src.read_text())
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, key, fit in ((axes[0], "gpu", cm.get("gpu_fit")), (axes[1], "cpu", cm.get("cpu_fit"))):
        rows = cm["model"].get(key)
        if not rows:
            ax.set_visible(False)
            continue
        ps = [r["p"] for r in rows[1:]]
        for name, lab in (("s_rd_scan", "recursive-doubling scan"), ("s_allgather_ring", "allgather (ring)"),
                          ("s_allgather_rd", "allgather (recursive doubling)"), ("s_ring", "ring (chain)")):
            if key == "gpu" and name == "s_allgather_rd" and "alpha_s" not in fit:
                continue  # alpha, beta not separable from one state size
            ls = ":" if name == "s_ring" else "-"
            ax.plot(ps, [r[name] + fit["t0_s"] for r in rows[1:]], ls=ls, label=lab + " (model)")
        if key == "gpu":
            for causal, mk in ((True, "o"), (False, "x")):
                pts = [(p["ranks"], p["collective_s"]) for p in fit["points"] if p["causal"] == causal]
                ax.scatter([x for x, _ in pts], [y for _, y in pts], marker=mk, color="k", zorder=5,
                           label=f"measured, {'causal (scans)' if causal else 'non-causal (allreduce)'}, min over files")
            ax.set_title(f"GPU: NCCL, H200 NVLink; fit: one scan round {fit['round_s'] * 1e6:.0f} µs at {fit['state_bytes']:,} B",
                         fontsize=9)
            ax.axhline(cm["step_s"], color="gray", lw=0.8, ls="--")
            ax.text(2, cm["step_s"] * 1.1, f"step compute time {cm['step_s']:.2f} s (8M tokens/GPU, causal)", fontsize=7)
        else:
            n = cm["state_bytes"]
            ax.set_title(f"CPU ranks (Open MPI shm): α={fit['alpha_s'] * 1e6:.1f} µs, "
                         f"1/β={fit['bandwidth_GBps']:.2g} GB/s; n = {n:,} B", fontsize=9)
            for dropped, mk in ((False, "o"), (True, "x")):
                pts = [p["collective_alone_s"] for p in fit["points"] if p["state_bytes"] == n and p["dropped"] == dropped]
                if pts:
                    ax.scatter([2] * len(pts), pts, marker=mk, color="k", zorder=5,
                               label=f"measured at 2 ranks, n = {n:,} B" + (" (dropped from the fit)" if dropped else ""))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("ranks p")
        ax.set_ylabel("collective time per forward + backward step (s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = results / "cost-model" / "cost_model.png"
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--only", choices=("seqlen", "memory", "scaling", "accuracy", "cost"))
    args = p.parse_args()
    results = Path(args.results)
    recs = load(results)
    wrote = []
    want = lambda k: args.only in (None, k)  # noqa: E731
    if want("seqlen"):
        gpu = newest_only([r for r in recs if on_gpu(r)])
        wrote.append(plot_seqlen(gpu, results / "seqlen-gpu.png", "Forward + backward against sequence length on GPUs"))
        wrote.append(plot_seqlen([r for r in recs if not on_gpu(r)], results / "seqlen-cpu.png",
                                 "Forward + backward against sequence length on CPUs"))
        for folder in sorted({r["folder"] for r in recs if "/" not in r["folder"] and (results / r["folder"]).is_dir()}):
            sub = [r for r in recs if r["folder"] == folder]
            if any(r["study"] in ("seqlen", "") for r in sub):
                wrote.append(plot_seqlen(sub, results / folder / "seqlen.png", folder))
    if want("memory"):
        wrote.append(plot_memory(newest_only([r for r in recs if on_gpu(r)]), results / "memory-gpu.png", "GPUs"))
        wrote.append(plot_memory([r for r in recs if not on_gpu(r)], results / "memory-cpu.png", "CPUs"))
    if want("scaling"):
        wrote.append(plot_scaling(recs, results / "scaling-all.png"))
    if want("accuracy"):
        wrote.append(plot_accuracy(results))
    if want("cost"):
        wrote.append(plot_cost(results))
    for w in wrote:
        if w:
            print(w.relative_to(ROOT) if w.is_relative_to(ROOT) else w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
