// Warp-level building blocks of the warp-tile kernels (stream_*.cuh; the TF32 products: the
// causal query totals' normaliser; the 16-bit ones: warp_tiles16.cuh): one warp owns a tile of 16 tokens
// and keeps every per-token quantity in registers, in the operand layouts of the TF32
// tensor-core instruction mma.sync.m16n8k8 (PTX ISA, "Matrix fragments for mma.m16n8k8"):
// lane = 4 g + t holds rows g and g + 8 of A and C, column t (and t + 4) of A, column 2t, 2t + 1
// of C, and row t (and t + 4) of B.
//
// The trick that keeps data in registers: a product's inner axis may be permuted freely, and the
// axes that come from or go to memory may be permuted as long as loads and stores agree. So
// - token rows: lane (g, t) holds rows g, g+8 at columns 32 s + 8 t + j (j = 0..7), i.e. one
//   16-byte vector per row and block s of 32 columns ("row layout");
// - a C tile over D columns (n-tile 4 s + c) holds column 32 s + 8 t + 2 c + w at lane (g, t),
//   element w: exactly the row layout, so outputs are 16-byte stores with no shuffle, and the
//   extra column D (the normaliser) is n-tile D / 8, column D + 2 t + w;
// - the feature axis (M = L 2^P = 64 with L = P = 4): lane (g, t) owns table t, its 16 buckets r,
//   for its two rows (the projection's columns are permuted so that the lane gets that table's
//   4 planes), so the feature map and its backward need no data from other lanes;
// - the states S and U, B operands shared by the block's warps, are copied once per block into
//   shared memory already in fragment order (one 8-byte load per lane and k-step).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "block_ops.cuh"

namespace racesp::cuda::warp {

constexpr int kTile = 16;  // tokens per warp tile
constexpr int kP = 4, kR = 16, kM = 64, kLP = 16;  // the sizes v9 is written for (L = 4 tables)

__device__ __forceinline__ unsigned lane_id() { return threadIdx.x % 32; }

// Round to TF32 (to nearest, ties away from zero: wmma::__float_to_tf32's rounding).
__device__ __forceinline__ std::uint32_t tf32(float x) {
    std::uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ float tf32f(float x) { return __uint_as_float(tf32(x)); }

// d += a b, 16 x 8 x 8, TF32 operands, float32 accumulation.
__device__ __forceinline__ void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The physical column of C's n-tile `nt` column j (0..7) over D columns (+ the extra column).
template <int D>
__host__ __device__ inline int out_col(int nt, int j) {
    return nt < D / 8 ? 32 * (nt / 4) + 8 * (j / 2) + 2 * (nt % 4) + j % 2 : D + j;
}
// The projection's column n of n-tile nt (0, 1) is plane 2 nt + n % 2 of table n / 2, so that C's
// lane (g, t) gets table t's four planes: (nt 0: planes 0, 1; nt 1: planes 2, 3).
__host__ __device__ inline int proj_col(int nt, int n) { return 4 * (n / 2) + 2 * nt + n % 2; }

// Sum over the four lanes t of the lane's row group g (a row's tables, or its C columns).
__device__ __forceinline__ float sum_over_t(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Two rows of a 16-token tile in the row layout. Rows at or beyond n are zeros.
template <class T, int D>
struct Rows {
    static constexpr int NB = D / 32;
    uint4 x[2][NB];
    __device__ __forceinline__ void load(const T* base, long long row0, long long row_stride, int n) {
        const unsigned g = lane_id() / 4, t = lane_id() % 4;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = g + 8 * r;
#pragma unroll
            for (int s = 0; s < NB; ++s)
                x[r][s] = row < n ? __ldg(reinterpret_cast<const uint4*>(base + row0 + row * row_stride + 32 * s + 8 * t))
                                  : make_uint4(0, 0, 0, 0);
        }
    }
    __device__ __forceinline__ void floats(int r, int s, float* f) const { unpack16<T>(x[r][s], f); }
};

// A warp's slot in shared memory for the next tile's rows (v21): each lane copies with cp.async
// exactly the 16-byte pieces its Rows will hold, so a lane reads back only what it copied itself
// and needs cp.async.wait_group, not a barrier. Rows at or beyond n are zero-filled. The pieces
// lie [row half][block][lane]: a warp's copies and reads are 512 contiguous bytes each.
template <class T, int D>
struct StagedRows {
    static constexpr int NB = Rows<T, D>::NB;
    static constexpr int kBytes = 2 * NB * 32 * 16;  // per warp
    uint4* slot;
    // Call only once the rows read from the slot before have been used (their values consumed),
    // so that the copy cannot overwrite them first.
    __device__ __forceinline__ void fetch(const T* base, long long row0, long long row_stride, int n) const {
        const unsigned g = lane_id() / 4, t = lane_id() % 4;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = g + 8 * r;
            const T* src = base + row0 + (row < n ? row : 0) * row_stride + 8 * t;  // a valid address either way
#pragma unroll
            for (int s = 0; s < NB; ++s) {
                const auto dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(slot + (r * NB + s) * 32 + lane_id()));
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src + 32 * s),
                             "r"(row < n ? 16 : 0)
                             : "memory");
            }
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    }
    // Waits for every copy this lane has issued, then reads the rows.
    __device__ __forceinline__ void read(Rows<T, D>& x) const {
        asm volatile("cp.async.wait_group 0;" ::: "memory");
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
            for (int s = 0; s < NB; ++s) x.x[r][s] = slot[(r * NB + s) * 32 + lane_id()];
    }
};

// Stores the C tiles acc[0 .. D/8) (row layout, scaled per row) as rows of T; rows >= n skipped.
template <class T, int D, int NT>
__device__ __forceinline__ void store_rows(T* base, long long row0, long long row_stride, int n,
                                           const float (&acc)[NT][4], const float (&scale)[2]) {
    const unsigned g = lane_id() / 4, t = lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = g + 8 * r;
        if (row >= n) continue;
#pragma unroll
        for (int s = 0; s < D / 32; ++s) {
            float f[8];
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                f[2 * c] = acc[4 * s + c][2 * r] * scale[r];
                f[2 * c + 1] = acc[4 * s + c][2 * r + 1] * scale[r];
            }
            *reinterpret_cast<uint4*>(base + row0 + row * row_stride + 32 * s + 8 * t) = pack16<T>(f);
        }
    }
}

// v46: the feature map's exponentials and tanh on the special-function unit alone (ex2.approx,
// since v72 of an argument already scaled by log2(e); rcp.approx), where expf and tanhf add range
// reduction, a polynomial and a select (8 of each per lane and call). Their errors, a few units in
// float32's last place (tanh: ~1e-7 absolute), are far below the 2^-9 of the bf16 operands that
// every product of these kernels takes (the warp tiles serve bf16 and fp16 inputs only; float32
// runs the segment kernels' block_ops feature map). The sigmoid's 1 / (1 + e) takes either form
// (Recip): the approximate one made the key totals, the causal forward and the query totals
// faster, and the causal totals, the causal backward and the keys' side slower (more spill, other
// schedules); v66b measured it faster in the causal backward, which no longer spills with it.
enum class Recip { ieee, approx };
__device__ __forceinline__ float fast_rcp(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ float fast_ex2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
// v72: 1 - 2 / (1 + e^(2x)), five instructions where (1 - e) / (1 + e) with e = e^(-2|x|) and the
// sign took seven (e^(2x) = inf gives 1, 0 gives -1); ~1e-7 absolute either way.
__device__ __forceinline__ float fast_tanh(float x) {
    return fmaf(-2.0f, fast_rcp(1.0f + fast_ex2(2.8853900817779268f * x)), 1.0f);  // 2 log2(e)
}

// phi[r][b]: the 16 features of table t for the lane's row r (bucket b: plane p's bit is
// (b >> (P-1-p)) & 1), the same floored bit probabilities as block_ops' feature_map. v33: one
// exponential and one reciprocal per plane (with e = exp(-|y|), sigma(|y|) = 1 / (1 + e) and
// sigma(-|y|) = e sigma(|y|), so the small probability keeps its digits as when computed on its
// own), and the products as a tree (planes 0, 1 times planes 2, 3: 24 products, not 48).
// Rows at or beyond n get zeros.
template <Recip kRecip = Recip::ieee>
__device__ __forceinline__ void features(const float (&u)[2][kP], float beta, int n, float (&phi)[2][kR]) {
    static_assert(kP == 4, "the product tree pairs planes 0, 1 and 2, 3");
    const float floor = static_cast<float>(exp(-87.0 / kP));
    // v72: e = exp(-|2 beta u|) = 2^(|u| k) in one product, and the bit's side from u's sign: beta
    // > 0 always (config.cpp checks it; the model learns log beta).
    const float k = -2.8853900817779268f * beta;  // -2 beta log2(e)
    const unsigned g = lane_id() / 4;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float s1[kP], s0[kP];
#pragma unroll
        for (int p = 0; p < kP; ++p) {
            const float e = fast_ex2(fabsf(u[r][p]) * k);
            const float big = kRecip == Recip::approx ? fast_rcp(1.0f + e) : 1.0f / (1.0f + e);
            const float small = fmaxf(e * big, floor);  // (big >= 1/2 needs no floor)
            const bool set = u[r][p] >= 0.0f;
            s1[p] = set ? big : small;  // bit set
            s0[p] = set ? small : big;  // bit clear
        }
        // front[i]: planes 0, 1 with bits i (bucket bits 3, 2); back[i]: planes 2, 3 (bits 1, 0).
        // A row past n gets zero fronts (v64: four selects a row, not sixteen).
        const bool valid = static_cast<int>(g) + 8 * r < n;
        float front[4], back[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            front[i] = valid ? ((i & 2) ? s1[0] : s0[0]) * ((i & 1) ? s1[1] : s0[1]) : 0.0f;
            back[i] = ((i & 2) ? s1[2] : s0[2]) * ((i & 1) ? s1[3] : s0[3]);
        }
#pragma unroll
        for (int b = 0; b < kR; ++b) phi[r][b] = front[b >> 2] * back[b & 3];
    }
}

// A fragment of k-step ks (features of table t, buckets 2ks, 2ks+1) from per-lane features.
__device__ __forceinline__ void feature_frag(const float (&phi)[2][kR], int ks, std::uint32_t (&a)[4]) {
    a[0] = tf32(phi[0][2 * ks]);
    a[1] = tf32(phi[1][2 * ks]);
    a[2] = tf32(phi[0][2 * ks + 1]);
    a[3] = tf32(phi[1][2 * ks + 1]);
}

// Backward of the feature map for the lane's rows and table (block_ops' feature_map_backward's
// formulas, its sums in another order): from dL/dphi (dph[r][b]) to dL/dz (dz[r][p], rounded to
// TF32: read only as the operand of dz Wp); returns the lane's part of dL/dbeta (its 8 terms
// summed in float32, v67: the callers add the calls in float64).
__device__ __forceinline__ double features_backward(const float (&u)[2][kP], const float (&phi)[2][kR],
                                                    const float (&dph)[2][kR], float beta, float (&dz)[2][kP]) {
    static_assert(kP == 4, "the sums halve the buckets plane by plane");
    float dbeta = 0.0f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        // m0 = sum_b gf[b], mp[p] = sum_b (+-) gf[b] (+ where plane p's bit is set). v33: by
        // halving (pairs, quads, halves), 41 additions instead of 80.
        float gf[kR], pairs[8], quads[4];
#pragma unroll
        for (int b = 0; b < kR; ++b) gf[b] = dph[r][b] * phi[r][b];
#pragma unroll
        for (int j = 0; j < 8; ++j) pairs[j] = gf[2 * j] + gf[2 * j + 1];
#pragma unroll
        for (int j = 0; j < 4; ++j) quads[j] = pairs[2 * j] + pairs[2 * j + 1];
        const float half0 = quads[0] + quads[1], half1 = quads[2] + quads[3];
        const float m0 = half0 + half1;
        float mp[kP];
        mp[0] = half1 - half0;
        mp[1] = (quads[1] + quads[3]) - (quads[0] + quads[2]);
        mp[2] = ((pairs[1] + pairs[3]) + (pairs[5] + pairs[7])) - ((pairs[0] + pairs[2]) + (pairs[4] + pairs[6]));
        float odd = gf[1], even = gf[0];
#pragma unroll
        for (int j = 1; j < 8; ++j) {
            odd += gf[2 * j + 1];
            even += gf[2 * j];
        }
        mp[3] = odd - even;
#pragma unroll
        for (int p = 0; p < kP; ++p) {
            const float th = fast_tanh(beta * u[r][p]);
            const float common = mp[p] - th * m0;
            dbeta += u[r][p] * common;
            dz[r][p] = tf32f((1.0f - u[r][p] * u[r][p]) * beta * common);
        }
    }
    return static_cast<double>(dbeta);
}

// Sum of a double over the block's warps in a fixed order (deterministic); `red` holds one
// double per warp. Returns the sum on thread 0 (others: 0).
__device__ __forceinline__ double block_sum(double x, double* red, int warps) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
    if (lane_id() == 0) red[threadIdx.x / 32] = x;
    __syncthreads();
    double s = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < warps; ++w) s += red[w];
    return s;
}

}  // namespace racesp::cuda::warp
