// Warp-tile helpers the stream kernels share: v9's block of 8 warps and its chunk, the block's
// segment, the masked 16 x 16 blocks, dout . o, and the TF32 operands of v12, the causal backward
// (stream_causal_backward.cuh): the planes arranged as B operands, [v, 1]^T, Wm from the
// forward's output. One warp owns a tile of 16 tokens; a block of 8 warps walks its segment in
// chunks of 128 tokens. (v9-v26 ran every pass on TF32 operands; v27 moved the non-causal passes
// to 16-bit ones (stream_noncausal.cuh), v34 the causal forward, v35 the causal query totals.)
#pragma once

#include "segment_kernel.cuh"
#include "warp_tiles.cuh"

namespace racesp::cuda {

// The block of 8 warps and its chunk; n-tiles over D and D + 1 columns.
template <class T, int D>
struct StreamLayout {
    static constexpr int kWarps = 8, kThreads = 32 * kWarps;
    static constexpr int kChunk = kWarps * warp::kTile;  // tokens per step of the two sums
    static constexpr int NTD = D / 8, NTW = NTD + 1;
};

namespace stream {

// The block's segment, head and batch entry, and where its tokens' rows start.
template <int D>
struct SegmentBlock {
    int seg, h, b, begin, end;  // tokens [begin, end) of the segment
    long long row_stride, bh;   // elements between tokens' rows; the (batch, head) index
    long long T;
    __device__ explicit SegmentBlock(const Dims& d)
        : seg(blockIdx.x), h(blockIdx.y), b(blockIdx.z), begin(seg * d.NS), end(min(d.T, begin + d.NS)),
          row_stride(static_cast<long long>(d.H) * D), bh(static_cast<long long>(b) * d.H + h), T(d.T) {}
    __device__ long long row_of(int tok) const { return (b * T + tok) * row_stride + static_cast<long long>(h) * D; }
};

// 1 / the normaliser of the lane's two rows: num's column D, lane t = 0's element 2r of the last tile.
template <int NTW>
__device__ __forceinline__ void inverse_normaliser(const float (&num)[NTW][4], float (&inv)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) inv[r] = 1.0f / __shfl_sync(0xffffffffu, num[NTW - 1][2 * r], warp::lane_id() & ~3u);
}

// The key features' sum z (column D of a state M x (D + 1)) into shared memory.
template <int D>
__device__ void load_key_sums(float* z, const float* x) {
    for (int f = threadIdx.x; f < warp::kM; f += blockDim.x) z[f] = __ldg(x + f * (D + 1) + D);
}

// Wp^T as B operand of the projection: k-step ks (columns in_col), n-tile nt (planes proj_col).
template <int D>
__device__ void arrange_projection(float2* out, const float* wp) {
    for (int i = threadIdx.x; i < D / 8 * 2 * 32; i += blockDim.x) {
        const int ks = i / 64, nt = (i / 32) % 2, g = (i % 32) / 4, t = i % 4;
        const float* row = wp + warp::proj_col(nt, g) * D;
        out[i] = make_float2(warp::tf32f(row[warp::in_col<D>(ks, t, 0)]), warp::tf32f(row[warp::in_col<D>(ks, t, 1)]));
    }
}
// Wp as B operand of dz Wp: k-step ks (planes 2ks, 2ks+1 of table t), n-tile nt (columns out_col).
template <int D>
__device__ void arrange_planes_out(float2* out, const float* wp) {
    for (int i = threadIdx.x; i < 2 * (D / 8) * 32; i += blockDim.x) {
        const int ks = i / (D / 8 * 32), nt = (i / 32) % (D / 8), g = (i % 32) / 4, t = i % 4;
        const int col = warp::out_col<D>(nt, g), lp = 4 * t + 2 * ks;
        out[i] = make_float2(warp::tf32f(wp[lp * D + col]), warp::tf32f(wp[(lp + 1) * D + col]));
    }
}
// dL/dphi in the lane's (row, bucket) layout from C tiles over features in the order of
// noncausal::arrange_state_t and v12's SharedState::by_columns (n-tile nt, column 2t + h: table t, bucket 2nt + h).
__device__ __forceinline__ void dphi_of(const float (&acc)[8][4], float (&dph)[2][warp::kR]) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            dph[r][2 * nt] = acc[nt][2 * r];
            dph[r][2 * nt + 1] = acc[nt][2 * r + 1];
        }
}

// A 16 x 16 block of a query tile with the same tokens' key tile (C tiles nt = 0, 1: query
// g + 8 (e / 2), key 8 nt + 2t + e % 2): zeroes the entries of keys after the query.
__device__ __forceinline__ void mask_diagonal(float (&c)[2][4]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (8 * nt + 2 * t + e % 2 > g + 8 * (e / 2)) c[nt][e] = 0.0f;
}

// c = a 16 x 16 block accumulated over even (half[0]) and odd (half[1]) k-steps apart (v23:
// dependent chains of half the length, twice as many in flight).
__device__ __forceinline__ void halves_sum(const float (&half)[2][2][4], float (&c)[2][4]) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[nt][e] = half[0][nt][e] + half[1][nt][e];
}

// x^T of the tile into xT's rows 0 .. D-1 ([column][token], ld ldV): the rows' 16-bit values as
// they are (exact in TF32).
template <class T, int D, int ldV>
__device__ __forceinline__ void put_rows_t(T* xT, int col0, const warp::Rows<T, D>& x) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
    unsigned short* x16 = reinterpret_cast<unsigned short*>(xT);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int tok = col0 + g + 8 * r;
#pragma unroll
        for (int s = 0; s < D / 32; ++s) {
            const unsigned wv[4] = {x.x[r][s].x, x.x[r][s].y, x.x[r][s].z, x.x[r][s].w};
#pragma unroll
            for (int j = 0; j < 8; ++j)
                x16[(32 * s + 8 * t + j) * ldV + tok] = static_cast<unsigned short>(wv[j / 2] >> (16 * (j % 2)));
        }
    }
}

// [v, 1]^T of the tile into vT: put_rows_t, and 1 in column D for the tile's n valid tokens.
template <class T, int D, int ldV>
__device__ __forceinline__ void put_values_t(T* vT, int col0, const warp::Rows<T, D>& xv, int n) {
    put_rows_t<T, D, ldV>(vT, col0, xv);
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r)
        if (t == 0) vT[D * ldV + col0 + g + 8 * r] = from_float<T>(g + 8 * r < n ? 1.0f : 0.0f);
}

// G . o for the lane's two rows (on every lane of the row's group).
template <class T, int D>
__device__ __forceinline__ void row_dots(const warp::Rows<T, D>& xg, const warp::Rows<T, D>& xo, float (&out)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float go = 0.0f;
#pragma unroll
        for (int s = 0; s < D / 32; ++s) {
            float gr[8], orow[8];
            xg.floats(r, s, gr);
            xo.floats(r, s, orow);
#pragma unroll
            for (int j = 0; j < 8; ++j) go += gr[j] * orow[j];
        }
        out[r] = warp::sum_over_t(go);
    }
}

// Wm = [G / den, -(G . o) / den] (kernel normalisation) from the forward's output o, as C tiles
// over D + 1 columns rounded to TF32; rows at or beyond n get zeros. Reading o instead of
// recomputing phi(q) S (FlashAttention's rowsum(dO * O)) leaves only the normaliser den.
template <class T, int D>
__device__ __forceinline__ void gradient_from_output(const warp::Rows<T, D>& xg, const warp::Rows<T, D>& xo,
                                                     const float (&den)[2], int n, float (&wm)[D / 8 + 1][4]) {
    constexpr int NTD = D / 8;
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
    float go[2];
    row_dots(xg, xo, go);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float inv = g + 8 * r < n ? 1.0f / den[r] : 0.0f;
#pragma unroll
        for (int s = 0; s < D / 32; ++s) {
            float gr[8];
            xg.floats(r, s, gr);
#pragma unroll
            for (int j = 0; j < 8; ++j) wm[4 * s + j / 2][2 * r + j % 2] = warp::tf32f(gr[j] * inv);
        }
        wm[NTD][2 * r] = t == 0 ? warp::tf32f(-go[r] * inv) : 0.0f;
        wm[NTD][2 * r + 1] = 0.0f;
    }
}

// B fragments b0, b1 of two neighbouring tokens' values of one column (bT[at], bT[at + 1]) as
// TF32: one 4- or 8-byte load.
template <class B>
__device__ __forceinline__ void b_pair(const B* bT, int at, std::uint32_t& b0, std::uint32_t& b1) {
    if constexpr (std::is_same<B, float>::value) {
        const float2 v = *reinterpret_cast<const float2*>(bT + at);
        b0 = __float_as_uint(v.x), b1 = __float_as_uint(v.y);
    } else {
        const unsigned v = *reinterpret_cast<const unsigned*>(bT + at);
        if constexpr (std::is_same<B, __nv_bfloat16>::value) {
            b0 = v << 16, b1 = v & 0xffff0000u;
        } else {
            __half2 h;
            memcpy(&h, &v, 4);
            const float2 f = __half22float2(h);
            b0 = __float_as_uint(f.x), b1 = __float_as_uint(f.y);
        }
    }
}

}  // namespace stream

}  // namespace racesp::cuda
