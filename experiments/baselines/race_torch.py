#!/usr/bin/env python3
"""RACE attention as a plain PyTorch program (DESIGN.md section 1, kernel normalisation), forward
and backward through autograd, timed like `racesp bench` and stepped up in sequence length until
the first out-of-memory (common.py). The baseline for RaceSP's own kernels at the same shapes.

Per head h, table l: z = W[h,l] x (P random planes, N(0,1), fixed), u = tanh(z),
phi_l(x)[r] = prod_p sigmoid(2 beta u_p c_{r,p}) over the R = 2^P corners c_r (plane 0 the most
significant bit); phi = concat_l phi_l (M = L R features). With S = sum_j phi(k_j) [v_j, 1]:
o_i = phi(q_i) S[:, :D] / phi(q_i) S[:, D]. Non-causal: S over every key, materialised features
[B, T, H, M]. Causal: chunks of C tokens, the masked intra-chunk products phi(Q_c) phi(K_c)^T and
the exclusive prefix of chunk states (cumsum over chunks of [B, H, T/C, M, D+1]). beta is a
learnable scalar (its gradient is computed too, as racesp's dbeta). Inputs in --dtype (bf16 on
the GPU); features and states in float32; o is returned in the input dtype.

  python3 experiments/baselines/race_torch.py --causal --planes 4 --tables 4 --out race.jsonl
  python3 experiments/baselines/race_torch.py --self-check     # float64 CPU check, no GPU needed

Prints one JSON line per length (racesp bench's field names, "command": "pytorch_race").
"""

import sys

from common import emit, parser, random_inputs, setup, sweep  # noqa: F401 (emit for users)


def make_planes(torch, heads, tables, planes, dim, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((heads, tables, planes, dim), generator=g, dtype=torch.float64).to(device)


def features(torch, x, w, beta):
    """phi(x): x [B, T, H, D] float, w [H, L, P, D] -> [B, T, H, L * 2^P]."""
    z = torch.einsum("bthd,hlpd->bthlp", x, w)
    s = torch.sigmoid(2.0 * beta * torch.tanh(z))  # probability of bit +1, per plane
    f = torch.ones(z.shape[:-1] + (1,), dtype=z.dtype, device=z.device)
    for p in range(z.shape[-1]):  # plane 0 first: the most significant bit of the corner index
        sp = s[..., p : p + 1]
        f = torch.stack((f * (1.0 - sp), f * sp), dim=-1).flatten(-2)
    return f.flatten(-2)


def race_noncausal(torch, phq, phk, v):
    sb = torch.einsum("bthm,bthd->bhmd", phk, v)
    sa = phk.sum(dim=1)  # [B, H, M]
    num = torch.einsum("bthm,bhmd->bthd", phq, sb)
    den = torch.einsum("bthm,bhm->bth", phq, sa)
    return num / den.unsqueeze(-1)


def race_causal(torch, phq, phk, v, chunk):
    b, t, h, m = phq.shape
    d = v.shape[-1]
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:  # padded keys come after every real query: the causal mask hides them
        phq = torch.nn.functional.pad(phq, (0, 0, 0, 0, 0, pad))
        phk = torch.nn.functional.pad(phk, (0, 0, 0, 0, 0, pad))
        v = torch.nn.functional.pad(v, (0, 0, 0, 0, 0, pad))
    vv = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)  # [B, T, H, D+1]
    q4 = phq.reshape(b, n, chunk, h, m).permute(0, 3, 1, 2, 4)  # [B, H, N, C, M]
    k4 = phk.reshape(b, n, chunk, h, m).permute(0, 3, 1, 2, 4)
    v4 = vv.reshape(b, n, chunk, h, d + 1).permute(0, 3, 1, 2, 4)  # [B, H, N, C, D+1]
    states = torch.einsum("bhncm,bhnce->bhnme", k4, v4)
    before = torch.cumsum(states, dim=2) - states  # exclusive prefix over chunks
    inter = torch.einsum("bhncm,bhnme->bhnce", q4, before)
    mask = torch.tril(torch.ones(chunk, chunk, dtype=phq.dtype, device=phq.device))  # key j <= query c
    scores = torch.einsum("bhncm,bhnjm->bhncj", q4, k4) * mask
    intra = torch.einsum("bhncj,bhnje->bhnce", scores, v4)
    total = (inter + intra).permute(0, 2, 3, 1, 4).reshape(b, n * chunk, h, d + 1)[:, :t]
    return total[..., :d] / total[..., d:]


def race_attention(torch, q, k, v, w, beta, causal, chunk, work_dtype):
    qf, kf, vf = q.to(work_dtype), k.to(work_dtype), v.to(work_dtype)
    wf = w.to(work_dtype)
    phq, phk = features(torch, qf, wf, beta), features(torch, kf, wf, beta)
    o = race_causal(torch, phq, phk, vf, chunk) if causal else race_noncausal(torch, phq, phk, vf)
    return o.to(q.dtype)


def self_check(torch):
    """Chunked causal and non-causal RACE in float64 against the explicit kernel matrix
    K = phi(Q) phi(K)^T (masked when causal), o = K V / K 1; exits 1 beyond 1e-10."""
    torch.manual_seed(1)
    b, t, h, d, planes, tables = 2, 203, 2, 16, 3, 2
    q, k, v = (torch.randn(b, t, h, d, dtype=torch.float64) for _ in range(3))
    w = make_planes(torch, h, tables, planes, d, "cpu", 0)
    beta = torch.tensor(1.5, dtype=torch.float64)
    phq, phk = features(torch, q, w, beta), features(torch, k, w, beta)
    # features are probability vectors per table: each table's sum is 1
    sums = phq.reshape(b, t, h, tables, -1).sum(-1)
    worst = float((sums - 1).abs().max())
    for causal in (False, True):
        kmat = torch.einsum("bihm,bjhm->bhij", phq, phk)
        if causal:
            kmat = kmat * torch.ones(t, t, dtype=torch.float64).tril()
        ref = torch.einsum("bhij,bjhd->bihd", kmat, v) / kmat.sum(-1).permute(0, 2, 1).unsqueeze(-1)
        got = race_attention(torch, q, k, v, w, beta, causal, 16, torch.float64)
        err = float((got - ref).abs().max() / ref.abs().max())
        print(f"race_torch self-check: causal={causal} max relative error {err:.3e}")
        worst = max(worst, err)
    print("race_torch self-check:", "OK" if worst < 1e-10 else "FAILED")
    return 0 if worst < 1e-10 else 1


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--planes", type=int, default=4, help="P (default 4)")
    p.add_argument("--tables", type=int, default=4, help="L (default 4)")
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--chunk", type=int, default=64, help="causal: tokens per chunk (default 64)")
    p.add_argument("--self-check", action="store_true", help="check the program in float64 on the CPU and exit")
    args = p.parse_args()
    import torch

    if args.self_check:
        return self_check(torch)
    setup(args, torch)
    w = make_planes(torch, args.heads, args.tables, args.planes, args.dim, args.device, args.seed)
    beta = torch.tensor(args.beta, dtype=torch.float32, device=args.device, requires_grad=True)

    def attend(q, k, v):
        return race_attention(torch, q, k, v, w, beta, args.causal, args.chunk, torch.float32)

    fields = {"normalization": "kernel", "planes": args.planes, "tables": args.tables, "beta": args.beta,
              "chunk": args.chunk if args.causal else 0, "method": "pytorch-race"}
    sweep(torch, args, "pytorch_race", fields, lambda t: random_inputs(torch, args, t, "bthd"), attend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
