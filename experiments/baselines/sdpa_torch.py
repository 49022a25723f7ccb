#!/usr/bin/env python3
"""Exact softmax attention through PyTorch's scaled_dot_product_attention, forward and backward,
timed like `racesp bench` and stepped up in sequence length until the first out-of-memory or a
forward + backward longer than --max-seconds (common.py): the quadratic baseline.

On the GPU the FlashAttention backend is forced (--backend flash, the default there; `auto` lets
PyTorch choose); on the CPU PyTorch picks its own. q, k, v are [B, H, T, D] in --dtype (bf16 on
the GPU), standard normal; the backward is o.backward(do).

  python3 experiments/baselines/sdpa_torch.py --causal --out sdpa.jsonl

Prints one JSON line per length (racesp bench's field names, "command": "torch_sdpa").
"""

import contextlib
import sys

from common import parser, random_inputs, setup, sweep


def backend_context(torch, name):
    """A context that restricts scaled_dot_product_attention to one backend."""
    if name == "auto":
        return contextlib.nullcontext()
    try:  # PyTorch >= 2.3
        from torch.nn.attention import SDPBackend, sdpa_kernel

        which = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "math": SDPBackend.MATH}[name]
        return sdpa_kernel([which])
    except ImportError:  # older PyTorch
        return torch.backends.cuda.sdp_kernel(enable_flash=name == "flash", enable_mem_efficient=name == "efficient",
                                              enable_math=name == "math")


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("flash", "efficient", "math", "auto"), default=None,
                   help="scaled_dot_product_attention backend (default: flash on cuda, auto on cpu)")
    args = p.parse_args()
    import torch
    import torch.nn.functional as F

    setup(args, torch)
    if args.backend is None:
        args.backend = "flash" if args.device == "cuda" else "auto"

    def attend(q, k, v):
        with backend_context(torch, args.backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=args.causal)

    fields = {"normalization": "softmax", "backend": args.backend, "method": f"torch-sdpa-{args.backend}"}
    sweep(torch, args, "torch_sdpa", fields, lambda t: random_inputs(torch, args, t, "bhtd"), attend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
