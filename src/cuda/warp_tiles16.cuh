// v27 (experiments/gpu-notes.md): the warp tiles of warp_tiles.cuh with 16-bit tensor-core
// operands, for the non-causal passes (stream_noncausal.cuh; since v34-v35 also the causal
// forward and query totals): mma.sync.m16n8k16 with bf16 (the
// projection of fp16 rows: fp16) operands and float32 accumulation does the work of two TF32
// m16n8k8 steps, and one 32-bit register carries two operands instead of one.
//
// Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"), lane = 4g + t:
// A register 0 holds row g at k 2t, 2t + 1 (the lower k in the lower half), register 1 row g + 8
// at the same k, registers 2, 3 rows g, g + 8 at k 2t + 8, 2t + 9; B register 0 holds column g at
// k 2t, 2t + 1, register 1 at k 2t + 8, 2t + 9; C as for m16n8k8 (warp_tiles.cuh). The inner axis
// is permuted, as there, so that a lane's four k of a step (call them e = 0..3: k = 2t + e % 2 +
// 8 (e / 2)) are neighbours in its registers or in memory:
// - over D columns, k-step ks: column 32 (ks / 2) + 8 t + 4 (ks % 2) + e, i.e. words 2 (ks % 2)
//   and 2 (ks % 2) + 1 of the lane's row-layout vector, and columns 2t, 2t + 1 of the C tiles
//   2 ks and 2 ks + 1 (out_col): a row or a C tile over D is an A operand with no shuffle;
// - over the 64 features, k-step ks: table t, bucket 4 ks + e;
// - over the 16 planes: table t, plane e.
// (The sums over a chunk's tokens take both operands from shared memory with k the token: wgmma
// in stream_noncausal.cuh's StateSlice, ldmatrix.trans in the causal totals' WarpSlice.)
// States are bf16 operands for fp16 inputs too: their sums over millions of tokens overflow fp16.
// bf16 keeps 8 bits of mantissa (TF32: 11), the bf16 outputs' own rounding.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "warp_tiles.cuh"
#include "wgmma.cuh"

namespace racesp::cuda::warp16 {

using warp::kLP;
using warp::kM;
using warp::kP;
using warp::kR;
using warp::lane_id;

// d += a b, 16 x 8 x 16, Op (bf16 or fp16) operands, float32 accumulation.
template <class Op = __nv_bfloat16>
__device__ __forceinline__ void mma(float (&d)[4], const std::uint32_t (&a)[4], uint2 b) {
    if constexpr (std::is_same<Op, __half>::value)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
}

// Two floats rounded to Op (to nearest even) in one register, lo in the lower half.
template <class Op = __nv_bfloat16>
__device__ __forceinline__ std::uint32_t pack(float lo, float hi) {
    std::uint32_t w;
    if constexpr (std::is_same<Op, __half>::value) {
        const __half2 h = __floats2half2_rn(lo, hi);
        memcpy(&w, &h, 4);
    } else {
        const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        memcpy(&w, &h, 4);
    }
    return w;
}

// x rounded to Op, as a float.
template <class Op = __nv_bfloat16>
__device__ __forceinline__ float round_to(float x) {
    if constexpr (std::is_same<Op, __half>::value)
        return __half2float(__float2half_rn(x));
    else
        return __bfloat162float(__float2bfloat16_rn(x));
}

// A word of two T values (bf16 or fp16) as two bf16 values.
template <class T>
__device__ __forceinline__ std::uint32_t as_bf16(std::uint32_t w) {
    if constexpr (std::is_same<T, __half>::value) {
        __half2 h;
        memcpy(&h, &w, 4);
        const float2 f = __half22float2(h);
        return pack(f.x, f.y);
    } else {
        return w;
    }
}

__device__ __forceinline__ std::uint32_t word(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The physical column of k-step ks's k e (0..3) over D columns, for lane column t.
__host__ __device__ inline int in_col(int ks, int t, int e) { return 32 * (ks / 2) + 8 * t + 4 * (ks % 2) + e; }

// The A fragment of k-step ks over D columns from rows in the row layout, as they are.
template <class T, int D>
__device__ __forceinline__ void rows_frag(const warp::Rows<T, D>& x, int ks, std::uint32_t (&a)[4]) {
    const int s = ks / 2, c = ks % 2;
    a[0] = word(x.x[0][s], 2 * c), a[1] = word(x.x[1][s], 2 * c);
    a[2] = word(x.x[0][s], 2 * c + 1), a[3] = word(x.x[1][s], 2 * c + 1);
}

// u = tanh of the projection's two parts summed: acc holds the C tiles [part][n-tile] (row g: e
// 0, 1; row g + 8: e 2, 3; n-tile nt: table t's planes 2 nt, 2 nt + 1).
__device__ __forceinline__ void planes_tanh(const float (&acc)[16], float (&u)[2][kP]) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int p = 0; p < kP; ++p) {
            const int e = 4 * (p / 2) + 2 * r + p % 2;  // n-tile p / 2, row r, column p % 2
            u[r][p] = warp::fast_tanh(acc[e] + acc[8 + e]);
        }
}

// u = tanh(x Wp^T) for the lane's rows and table t (warp::project's result). The planes are
// the sum of two T parts (`wpu` in fragment order, arrange_projection: k-step ks, n-tile nt at
// wpu[(ks * 2 + nt) * 32 + lane], x, y the first part, z, w the rest), so u keeps float32's
// accuracy: with the first alone (8 bits in bf16) every feature would come from planes off by
// 2^-9, and dL/dbeta of 5 tokens by 5% (gpu-notes.md, v27). v66: tanh on the special-function
// unit (warp::fast_tanh: ~1e-7 absolute, where tanhf's polynomial and exponential forms both
// run, ~17 instructions, 8 a lane and call).
template <class T, int D>
__device__ __forceinline__ void project(const warp::Rows<T, D>& x, const uint4* wpu, float (&u)[2][kP]) {
    float acc[2][2][4] = {};  // [part][n-tile]: two dependent chains
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        std::uint32_t a[4];
        rows_frag<T, D>(x, ks, a);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const uint4 w = wpu[(ks * 2 + nt) * 32 + lane_id()];
            mma<T>(acc[0][nt], a, make_uint2(w.x, w.y));
            mma<T>(acc[1][nt], a, make_uint2(w.z, w.w));
        }
    }
    planes_tanh(*reinterpret_cast<const float(*)[16]>(&acc[0][0][0]), u);
}

// v74: project for the 64 rows of a warpgroup (each warp its 16, as in project) on one wgmma per
// k-step, m64n32k16 with the planes' two parts side by side as N = 32, where project takes 32
// mma.sync and 16 shared loads a warp. All four warps of the warpgroup call it together. `tile`
// holds Wp's two parts as wgmma's K-major B operand (arrange_projection_tile): row n is C's
// column n (n-tile 2 part + nt), column 16 ks + kk is k-step ks's k kk in rows_frag's order.
template <class T, int D>
__device__ __forceinline__ void project_group(const warp::Rows<T, D>& x, const void* tile, float (&u)[2][kP]) {
    using Tile = wgmma::Blocked<D>;
    const auto* base = static_cast<const unsigned char*>(tile);
    float acc[16] = {};  // n-tile 2 part + nt: project's acc[part][nt]
    wgmma::fence(acc);
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        std::uint32_t a[4];
        rows_frag<T, D>(x, ks, a);
        wgmma::RegsTimesShared<32>::template run<0, T>(
            acc, a, wgmma::descriptor(base + 2 * Tile::at(0, 16 * ks), Tile::kBlockBytes, Tile::kRowGroupBytes));
    }
    wgmma::commit_and_wait(acc);
    planes_tanh(acc, u);
}

// The A fragment of k-step ks (0..3) over the features (table t, buckets 4ks .. 4ks + 3).
__device__ __forceinline__ void feature_frag(const float (&phi)[2][kR], int ks, std::uint32_t (&a)[4]) {
    a[0] = pack(phi[0][4 * ks], phi[0][4 * ks + 1]);
    a[1] = pack(phi[1][4 * ks], phi[1][4 * ks + 1]);
    a[2] = pack(phi[0][4 * ks + 2], phi[0][4 * ks + 3]);
    a[3] = pack(phi[1][4 * ks + 2], phi[1][4 * ks + 3]);
}

// The A fragment of k-step ks over D columns from rows in the row layout, as bf16.
template <class T, int D>
__device__ __forceinline__ void rows_frag_bf16(const warp::Rows<T, D>& x, int ks, std::uint32_t (&a)[4]) {
    rows_frag<T, D>(x, ks, a);
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = as_bf16<T>(a[i]);
}

// out (16 x D, C tiles in the row layout) = dz Wp: one k-step over the 16 planes; `wpd` holds
// Wp in fragment order (arrange_planes_out), n-tile nt at wpd[nt * 32 + lane].
template <int D>
__device__ __forceinline__ void planes_out(const float (&dz)[2][kP], const uint2* wpd, float (&out)[D / 8][4]) {
    const std::uint32_t a[4] = {pack(dz[0][0], dz[0][1]), pack(dz[1][0], dz[1][1]), pack(dz[0][2], dz[0][3]),
                                pack(dz[1][2], dz[1][3])};
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
        out[nt][0] = out[nt][1] = out[nt][2] = out[nt][3] = 0.0f;
        mma(out[nt], a, wpd[nt * 32 + lane_id()]);
    }
}

}  // namespace racesp::cuda::warp16
