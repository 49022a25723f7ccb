"""Shared parts of the PyTorch baselines (race_torch.py, sdpa_torch.py): options, the timing loop
(forward + backward, median over repeats after warm-up), stepping the sequence length up until the
first out-of-memory, and JSON lines with the field names of `racesp bench`.

Each baseline supplies make_inputs(T) -> (q, k, v, do) and attend(q, k, v) -> o; this module times
o = attend(q, k, v) and o.backward(do) and does the rest. Needs PyTorch; runs on CUDA when available (--device cuda, the default there), else CPU.
"""

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import sys
import time


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="input dtype (default bf16 on cuda, fp32 on cpu)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--causal", action="store_true", help="causal attention (default non-causal)")
    p.add_argument("--tokens", type=int, nargs="*", default=None,
                   help="explicit lengths; default: --start, doubled up to --max-tokens")
    p.add_argument("--start", type=int, default=1 << 14, help="first length of the doubling (default 16384)")
    p.add_argument("--max-tokens", type=int, default=1 << 27, help="last length tried (default 128M)")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="stop stepping up once one forward + backward took longer than this (default 120)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", help="append the JSON lines to this file too")
    p.add_argument("--seed", type=int, default=0)
    return p


def setup(args, torch):
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    args.torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(args.seed)


def machine(torch, args):
    m = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
         "torch": torch.__version__, "cores_on_host": os.cpu_count(), "threads": torch.get_num_threads()}
    if args.device == "cuda":
        m["gpu"] = torch.cuda.get_device_name()
        m["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        m["cuda"] = torch.version.cuda
    return m


def is_oom(torch, e):
    if isinstance(e, getattr(torch, "OutOfMemoryError", ())) or isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    text = str(e).lower()
    return "out of memory" in text or "cannot allocate memory" in text or isinstance(e, MemoryError)


def sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_one(torch, args, attend, inputs):
    """One forward + backward: (total, forward, backward) seconds. inputs = (q, k, v, do); the
    backward is o.backward(do), i.e. the gradients of the loss sum(o * do)."""
    q, k, v, do = inputs
    sync(torch, args.device)
    t0 = time.perf_counter()
    o = attend(q, k, v)
    sync(torch, args.device)
    t1 = time.perf_counter()
    o.backward(do)
    sync(torch, args.device)
    t2 = time.perf_counter()
    for x in (q, k, v):
        x.grad = None
    del o
    return t2 - t0, t1 - t0, t2 - t1


def measure(torch, args, make_inputs, attend, tokens):
    """Median forward + backward at one length; raises on out-of-memory. A run longer than
    --max-seconds ends the repeats (then the warm-up run itself is reported if nothing else ran)."""
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    inputs = make_inputs(tokens)
    runs = []
    for _ in range(args.warmup + args.repeats):
        runs.append(time_one(torch, args, attend, inputs))
        if runs[-1][0] > args.max_seconds:
            break
    del inputs
    timed = runs[args.warmup:] or runs[-1:]
    totals = [r[0] for r in timed]
    out = {"median_s": statistics.median(totals), "min_s": min(totals), "max_s": max(totals),
           "forward_s": statistics.median(r[1] for r in timed), "backward_s": statistics.median(r[2] for r in timed),
           "times_s": totals, "timed_runs": len(timed)}
    if args.device == "cuda":
        out["peak_device_bytes"] = torch.cuda.max_memory_allocated()
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def random_inputs(torch, args, tokens, layout):
    """q, k, v and do, standard normal, in the input dtype on the device, requiring gradients.
    layout 'bthd' is racesp's [B, T, H, D]; 'bhtd' is scaled_dot_product_attention's."""
    shape = (args.batch, tokens, args.heads, args.dim) if layout == "bthd" else (args.batch, args.heads, tokens, args.dim)
    make = lambda: torch.randn(shape, device=args.device, dtype=args.torch_dtype)  # noqa: E731
    q, k, v = (make().requires_grad_() for _ in range(3))
    return q, k, v, make()


def sweep(torch, args, command, fields, make_inputs, attend):
    """Runs every length (doubling from --start) until out-of-memory, --max-tokens or
    --max-seconds; prints one JSON line per length (the failing one with "oom": true)."""
    lengths = args.tokens or []
    if not lengths:
        t = args.start
        while t <= args.max_tokens:
            lengths.append(t)
            t *= 2
    base = {"command": command, "device": args.device, "causal": args.causal, "batch": args.batch,
            "heads": args.heads, "dim": args.dim, "dtype": args.dtype, "sp_size": 1, "dp_size": 1,
            "repeats": args.repeats, "warmup": args.warmup}
    base.update(fields)
    info = machine(torch, args)
    for tokens in lengths:
        line = dict(base, tokens=tokens, tokens_per_rank=tokens)
        try:
            line.update(measure(torch, args, make_inputs, attend, tokens))
            line["tokens_per_s"] = args.batch * tokens / line["median_s"]
            line["oom"] = False
        except Exception as e:  # noqa: BLE001 - out-of-memory is the expected end of the sweep
            if not is_oom(torch, e):
                raise
            line["oom"] = True
            line["error"] = str(e).splitlines()[0][:300]
        line["machine"] = info
        emit(args, line)
        if line["oom"]:
            print(f"{command}: out of memory at {tokens} tokens: stopping", file=sys.stderr)
            break
        if line["median_s"] > args.max_seconds:
            print(f"{command}: {tokens} tokens took {line['median_s']:.1f} s > --max-seconds: stopping", file=sys.stderr)
            break


def emit(args, line):
    text = json.dumps(line)
    print(text, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
