// Sizes of one segment kernel launch and the shared-memory layout of its block, computed the
// same way on host and device. Leading dimensions are padded to odd counts so that column
// walks through a tile hit distinct banks.
#pragma once

#include <algorithm>
#include <cstddef>

namespace racesp::cuda {

enum class Pass { key_state, forward, query_state, backward };

struct Dims {
    int T, H, D, W, L, P, R, M, LP;  // local tokens, heads, head dim, D+1, tables, planes, 2^P, L*R, L*P
    int C, NS, nseg;                 // chunk, segment tokens, segments per sequence
    float beta, eps, inv_tables;
    bool causal, bucket;
    bool tc;  // bf16/fp16 inputs: tile products on tensor cores (TF32), tiles laid out for WMMA
    int Wg;   // columns of the [.., D+1] tiles in products: D+1, rounded up to 16 with tc (zero pad)
    bool vec; // token rows move as 16-byte vectors, fetched one chunk ahead (block_ops.cuh, v4)
    bool fused; // v6: the Fixed kernels' feature map (split-k projection, fused sigmoid + phi)
};

// Whether a pass reads the chunk's keys and values: the key totals, every causal pass (intra-chunk
// products, S moved past each chunk) and the backward (dk, dv). Non-causal forward and query
// totals read only q (and dout).
__host__ __device__ inline bool pass_needs_keys(const Dims& d, Pass pass) {
    return pass == Pass::key_state || d.causal || pass == Pass::backward;
}

constexpr int kBlockThreads = 512;
// v6: the fused feature map splits the projection X Wp^T over this many groups of the D axis,
// one warp per (16-row tile, group); its partial tiles (16 x 16 floats each) live in `sig`.
constexpr int kProjGroups = 4;

// Offsets in floats into the block's dynamic shared memory; 0 size when a pass does not use it.
struct Layout {
    int ldD, ldW, ldM, ldC, ldLP, ldSig;
    std::size_t Wp, S, U, X, V, Wm, uq, uk, sig, phq, phk, pht, r, att, p2, num, dphq, dphk, dz, dz2, red;
    std::size_t total;  // floats
};

__host__ __device__ inline int odd_pad(int n) { return n % 2 == 0 ? n + 1 : n; }
// WMMA wants leading dimensions that are multiples of 4 floats; +4 staggers the rows' banks.
__host__ __device__ inline int wmma_pad(int n) { return (n + 3) / 4 * 4 + 4; }

__host__ __device__ inline Layout make_layout(const Dims& d, Pass pass) {
    Layout l{};
    auto pad = [&](int n) { return d.tc ? wmma_pad(n) : odd_pad(n); };
    l.ldD = pad(d.D);
    l.ldW = d.tc ? wmma_pad(d.Wg) : odd_pad(d.W);
    l.ldM = pad(d.M);
    l.ldC = pad(d.C);
    l.ldLP = pad(d.LP);
    l.ldSig = odd_pad(2 * d.LP);
    const bool fwd_like = pass != Pass::key_state;
    const bool grad = pass == Pass::query_state || pass == Pass::backward;
    const bool bwd = pass == Pass::backward;
    const bool keys = pass_needs_keys(d, pass);
    std::size_t at = 0;
    // Each buffer starts on a 64-byte boundary (WMMA tiles need 32; the block-sum area holds doubles).
    auto take = [&](std::size_t floats) {
        const std::size_t here = at;
        at += (floats + 15) / 16 * 16;
        return here;
    };
    const std::size_t C = d.C;
    l.Wp = take(std::size_t(d.LP) * l.ldD);
    l.S = take(std::size_t(d.M) * l.ldW);
    l.U = grad ? take(std::size_t(d.M) * l.ldW) : 0;
    l.X = take(C * l.ldD);
    l.V = keys ? take(C * l.ldW) : 0;
    l.Wm = grad ? take(C * l.ldW) : 0;
    l.uq = fwd_like ? take(C * l.ldLP) : 0;
    l.uk = keys ? take(C * l.ldLP) : 0;
    // v6 (fused): the projection's partial tiles, kProjGroups x C/16 tiles of 16 x 16 (LP = 16),
    // here, except where the bucket normalisation's r tile (C x M >= that, dead while the feature
    // maps run) holds them: the non-causal bucket backward at D=128 has no 3.9 KB to spare.
    const bool part_in_r = fwd_like && d.bucket;
    l.sig = take(d.fused && !part_in_r ? std::max<std::size_t>(C * l.ldSig, std::size_t(kProjGroups) * C * 16)
                                       : C * l.ldSig);
    l.phq = fwd_like ? take(C * l.ldM) : 0;
    l.phk = keys ? take(C * l.ldM) : 0;
    l.pht = fwd_like && d.bucket ? take(C * l.ldM) : 0;
    l.r = fwd_like && d.bucket ? take(C * l.ldM) : 0;
    l.att = fwd_like && d.causal ? take(C * l.ldC) : 0;
    l.p2 = grad && d.causal ? take(C * l.ldC) : 0;
    l.num = fwd_like ? take(C * l.ldW) : 0;
    l.dphq = grad ? take(C * l.ldM) : 0;
    l.dphk = bwd ? take(C * l.ldM) : 0;
    // v8: non-causal query totals may compute dq (SegmentArgs::split_dq): dz and the dbeta sum.
    const bool dq = bwd || (grad && !d.causal);
    l.dz = dq ? take(C * l.ldLP) : 0;
    l.dz2 = bwd ? take(C * l.ldLP) : 0;  // the keys' dL/dz beside the queries' (v4)
    l.red = dq ? take(2 * kBlockThreads) : 0;  // one double per thread for the dbeta block sum
    l.total = at;
    return l;
}

}  // namespace racesp::cuda
