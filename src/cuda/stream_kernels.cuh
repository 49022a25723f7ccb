// Warp-tile helpers the stream kernels share: v9's block of 8 warps and its chunk, the block's
// segment, the masked 16 x 16 blocks, dL/dphi from C tiles, dout . o. One warp owns a tile of 16
// tokens; a block of 8 warps walks its segment in chunks of 128 tokens. (v9-v26 ran every pass on
// TF32 operands; v27 moved the non-causal passes to 16-bit ones (stream_noncausal.cuh), v34 the
// causal forward, v35 the causal query totals, v38 the causal backward.)
#pragma once

#include "segment_kernel.cuh"
#include "warp_tiles.cuh"
#include "warp_tiles16.cuh"
#include "wgmma.cuh"

namespace racesp::cuda {

// The block of 8 warps and its chunk; n-tiles over D and D + 1 columns.
template <class T, int D>
struct StreamLayout {
    static constexpr int kWarps = 8, kThreads = 32 * kWarps;
    static constexpr int kChunk = kWarps * warp::kTile;  // tokens per step of the two sums
    static constexpr int NTD = D / 8, NTW = NTD + 1;
    // v53-v56: the chunks' tiles in wgmma's layout (wgmma::Blocked; ldmatrix reads it too):
    // features [token][feature] (noncausal::feature_pos's order), right-hand sides ([v, 1] or
    // [G, c]) [token][column] (out_col's order: D, column D in two parts, zeros up to an even
    // number of n-tiles, so that each warpgroup sums half of them).
    static constexpr int kW = 16 * ((NTW + 1) / 2);
    using FeatureTile = wgmma::Blocked<warp::kM>;
    using WideTile = wgmma::Blocked<kW>;
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
    for (int r = 0; r < 2; ++r) inv[r] = warp::fast_rcp(__shfl_sync(0xffffffffu, num[NTW - 1][2 * r], warp::lane_id() & ~3u));
}

// The key features' sum z (column D of a state M x (D + 1)) into shared memory.
template <int D>
__device__ void load_key_sums(float* z, const float* x) {
    for (int f = threadIdx.x; f < warp::kM; f += blockDim.x) z[f] = __ldg(x + f * (D + 1) + D);
}

// dL/dphi in the lane's (row, bucket) layout from C tiles over features in the order of
// noncausal::arrange_state_t and v38's causal_backward::feature_pos (n-tile nt, column 2t + h: table t, bucket 2nt + h).
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

// G . o for the lane's two rows (on every lane of the row's group), with G as the tensor cores
// take it (bf16; fp16 rows rounded to bf16): the passes subtract G . o from products of G's
// operands (G . v_j, G S^T), and the difference is only right when both see the same G (v38).
template <class T, int D>
__device__ __forceinline__ void row_dots(const warp::Rows<T, D>& xg, const warp::Rows<T, D>& xo, float (&out)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float go = 0.0f;
#pragma unroll
        for (int s = 0; s < D / 32; ++s) {
            const uint4 w = xg.x[r][s];
            float gr[8], orow[8];
            unpack16<__nv_bfloat16>(make_uint4(warp16::as_bf16<T>(w.x), warp16::as_bf16<T>(w.y), warp16::as_bf16<T>(w.z),
                                               warp16::as_bf16<T>(w.w)),
                                    gr);
            xo.floats(r, s, orow);
#pragma unroll
            for (int j = 0; j < 8; ++j) go += gr[j] * orow[j];
        }
        out[r] = warp::sum_over_t(go);
    }
}

}  // namespace stream

}  // namespace racesp::cuda
