// v14 (experiments/gpu-notes.md): the causal query totals from the forward's output, for the sizes
// of v9's kernels (bf16/fp16, kernel normalisation, P = L = 4, D = 64 or 128). The segment's
// U = sum phi(q)^T Wm with Wm = [G / den, -(G . o) / den] needs, besides o and G, only each query's
// normaliser
//
//   den_i = phi(q_i) . (z + sum_{j <= i in the segment} phi(k_j)),   z = S[:, D] at the segment's start,
//
// so the state S is never needed beyond its column D (v11 recomputed the whole forward), and
// U = sum (phi(q) / den)^T [G, -(G . o)] takes G as the 16-bit rows they are. One block per
// (segment, head, batch entry) walks its segment in chunks of 128 tokens, warp w on tokens
// 16w .. 16w + 15:
//   1. each warp computes its keys' features and writes their sum over the tile (one row of zt),
//      its queries' features and the masked diagonal block phi(q) phi(k)^T of its own tile, both
//      operands in registers; barrier;
//   2. the normaliser as one product phi(q) Z over 16 columns: Z's columns 0..7 are the chunk's
//      tile sums (those before the warp's tile count), column 8 the sum before the chunk; the
//      last warp moves that sum past the chunk (two copies, alternating, so that no barrier
//      separates its readers from the writer); phi(q) / den and [G, -(G . o)] into the chunk's
//      tiles as rows (bf16; column D in two parts), as the non-causal query totals; barrier;
//   3. each warp adds the chunk to its slice of U (registers, from zero; v35: bf16 operands read
//      with ldmatrix.trans, WarpSlice below); barrier.
// The normaliser's products stay TF32. At most 128 registers: two blocks per multiprocessor
// (v15; v14 kept Wm = [G, -(G . o)] / den as float32 C tiles and Wm^T in float32, 120 KB, 230
// registers).
//
// v50: with kKeptNormalisers, 1 / den comes from the forward (a.inv_den, written by v10 under
// Engine::KeyTotals::keep), so steps 1 and 2 shrink to the queries' features and the reads of
// G, o and 1 / den: no keys, no diagonal block, no Z.
// v74: the projections are a warpgroup's wgmma (warp16::project_group).
#pragma once

#include "stream_noncausal.cuh"

namespace racesp::cuda {

template <class T, int D>
struct CausalTotalsLayout {
    using Base = NoncausalLayout<T, D>;
    static constexpr int kWarps = Base::kWarps, kThreads = Base::kThreads, kChunk = Base::kChunk;
    static constexpr int kW = Base::kW;
    using FeatureTile = typename Base::FeatureTile;
    using WideTile = typename Base::WideTile;
    // zt rows: the chunk's 8 tile sums, then the sum before the chunk in two alternating copies.
    // 66 floats a row: the B fragments' 8-byte loads (row g, features 16t + 2ks) take the minimum
    // two wavefronts.
    static constexpr int kZRows = kWarps + 2, ldZ = warp::kM + 2;
    std::size_t wpt, zt, phi, rows, total;
    __host__ __device__ constexpr CausalTotalsLayout() : wpt(0), zt(0), phi(0), rows(0), total(0) {
        std::size_t at = 0;
        auto take = [&](std::size_t bytes) {
            const std::size_t here = at;
            at += (bytes + 127) / 128 * 128;
            return here;
        };
        wpt = take(32 * D * sizeof(__nv_bfloat16));  // project_group's planes
        zt = take(kZRows * ldZ * sizeof(float));
        phi = take(kChunk * warp::kM * sizeof(__nv_bfloat16));
        rows = take(kChunk * kW * sizeof(__nv_bfloat16));
        total = at;
    }
};

namespace stream {

// The tile's key features summed over its 16 rows into row[16 t + b] (lanes 0..3 write).
__device__ __forceinline__ void put_tile_sums(float* row, const float (&phi)[2][warp::kR]) {
#pragma unroll
    for (int b = 0; b < warp::kR; ++b) {
        float s = phi[0][b] + phi[1][b];
        s += __shfl_xor_sync(0xffffffffu, s, 4);
        s += __shfl_xor_sync(0xffffffffu, s, 8);
        s += __shfl_xor_sync(0xffffffffu, s, 16);
        if (warp::lane_id() < 4) row[warp::kR * warp::lane_id() + b] = s;
    }
}

// U summed over tokens on mma.sync, each warp its slice (v35-v55's StateSlice, on the blocked
// tiles): m-tiles 0..3 of n-tiles w + 8 i, and for warps 0..3 m-tile w of column D's n-tile; A =
// phi^T and B = the rows, both read [token][column] with ldmatrix.trans (k is the token). (v56:
// with noncausal::StateSlice's wgmma sums this kernel took 2.34 ms at 2M instead of 1.82.)
template <int D>
struct WarpSlice {
    static constexpr int NTD = D / 8, FULL = D / 64;
    float acc[FULL * 4 + 1][4] = {};

    template <class FeatureTile, class WideTile, int kChunk>
    __device__ __forceinline__ void add(const __nv_bfloat16* phi, const __nv_bfloat16* rows) {
        const int w = threadIdx.x / 32, i = warp::lane_id() % 8, j = warp::lane_id() / 8;
        // Lane 8j + i addresses row i of block j: A's blocks (a0 .. a3) are tokens + 8 (j / 2),
        // features + 8 (j % 2); B's (b0, b1 of n-tile w, then of w + 8) tokens + 8 (j % 2),
        // columns + 64 (j / 2).
#pragma unroll 2
        for (int kk = 0; kk < kChunk / 16; ++kk) {
            std::uint32_t a[4][4];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
                noncausal::ldmatrix_t(a[mt], phi + FeatureTile::at(16 * kk + i + 8 * (j / 2), 16 * mt + 8 * (j % 2)));
            if constexpr (FULL == 2) {
                std::uint32_t b[4];
                noncausal::ldmatrix_t(b, rows + WideTile::at(16 * kk + i + 8 * (j % 2), 8 * w + 64 * (j / 2)));
#pragma unroll
                for (int mt = 0; mt < 4; ++mt) {
                    warp16::mma(acc[mt], a[mt], make_uint2(b[0], b[1]));
                    warp16::mma(acc[4 + mt], a[mt], make_uint2(b[2], b[3]));
                }
            } else {
                std::uint32_t b[2];
                noncausal::ldmatrix_t(b, rows + WideTile::at(16 * kk + i + 8 * (j % 2), 8 * w));
#pragma unroll
                for (int mt = 0; mt < 4; ++mt) warp16::mma(acc[mt], a[mt], make_uint2(b[0], b[1]));
            }
            if (w < 4) {
                // m-tile w of column D's n-tile (its own loads: a register array cannot be
                // indexed by the warp number without going to local memory).
                std::uint32_t ax[4], bx[2];
                noncausal::ldmatrix_t(ax, phi + FeatureTile::at(16 * kk + i + 8 * (j / 2), 16 * w + 8 * (j % 2)));
                noncausal::ldmatrix_t(bx, rows + WideTile::at(16 * kk + i + 8 * (j % 2), D));
                warp16::mma(acc[4 * FULL], ax, make_uint2(bx[0], bx[1]));
            }
        }
    }
    // The sum into a float32 state (M x (D + 1)): features from feature_pos, columns from
    // out_col; column D is the sum of its two parts.
    __device__ __forceinline__ void store(float* out) const {
        const int w = threadIdx.x / 32, g = warp::lane_id() / 4, t = warp::lane_id() % 4;
        auto put = [&](float v, int p, int col) { out[noncausal::feature_at(p) * (D + 1) + col] = v; };
#pragma unroll
        for (int i = 0; i < FULL; ++i)
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    put(acc[4 * i + mt][e], 16 * mt + g + 8 * (e / 2), warp::out_col<D>(w + 8 * i, 2 * t + e % 2));
        if (w < 4 && t == 0)
#pragma unroll
            for (int h = 0; h < 2; ++h) put(acc[4 * FULL][2 * h] + acc[4 * FULL][2 * h + 1], 16 * w + g + 8 * h, D);
    }
};

}  // namespace stream

template <class T, int D, bool kKeptNormalisers>
__global__ void __launch_bounds__(CausalTotalsLayout<T, D>::kThreads, 2) causal_totals_kernel(const SegmentArgs<T> a) {
    using Lay = CausalTotalsLayout<T, D>;
    using namespace warp;
    constexpr Lay lay;
    using bf16 = __nv_bfloat16;
    constexpr int kChunk = Lay::kChunk, ldZ = Lay::ldZ;
    using FeatureTile = typename Lay::FeatureTile;
    using WideTile = typename Lay::WideTile;
    extern __shared__ __align__(128) unsigned char sm[];
    std::uint32_t* wpt = reinterpret_cast<std::uint32_t*>(sm + lay.wpt);
    float* zt = reinterpret_cast<float*>(sm + lay.zt);
    bf16* phi_s = reinterpret_cast<bf16*>(sm + lay.phi);
    bf16* rows_s = reinterpret_cast<bf16*>(sm + lay.rows);

    const Dims& d = a.d;
    const stream::SegmentBlock<D> blk(d);
    const int seg = blk.seg, seg_begin = blk.begin, seg_end = blk.end;
    const long long row_stride = blk.row_stride, bh = blk.bh;
    const int warp_id = threadIdx.x / 32, g = lane_id() / 4, t = lane_id() % 4;

    noncausal::arrange_projection_tile<T, D>(wpt, a.planes + blk.h * static_cast<long long>(kLP) * D);
    if constexpr (!kKeptNormalisers)
        stream::load_key_sums<D>(zt + Lay::kWarps * ldZ, a.s_start + (bh * d.nseg + seg) * a.s_seg_stride);
    noncausal::zero_padding<D, WideTile, Lay::kW>(rows_s, kChunk);
    stream::WarpSlice<D> u_slice;
    wgmma::proxy_fence();  // wpt is read by wgmma
    __syncthreads();

    [[maybe_unused]] int before = Lay::kWarps;  // zt row of the sum before the chunk (kWarps or kWarps + 1)
    for (int c0 = seg_begin; c0 < seg_end; c0 += kChunk) {
        const int t0 = c0 + kTile * warp_id;
        const int n = max(0, min(kTile, seg_end - t0));
        const long long row0 = blk.row_of(min(t0, seg_end - 1));
        const int col0 = kTile * warp_id;
        float phq[2][kR], inv[2];  // the queries' features, 1 / den (0 beyond the segment)
        if constexpr (kKeptNormalisers) {
            // 1-2. The queries' features; 1 / den as the forward divided o by.
            float u[2][kP];
            Rows<T, D> xq;
            xq.load(a.q, row0, row_stride, n);
            warp16::project_group<T, D>(xq, wpt, u);
            features<Recip::approx>(u, d.beta, n, phq);
            const float* kept = a.inv_den + bh * d.T + c0 + col0;
#pragma unroll
            for (int r = 0; r < 2; ++r) inv[r] = g + 8 * r < n ? kept[g + 8 * r] : 0.0f;
        } else {
            // 1. Features of the tile's keys (their sum) and queries, the diagonal block.
            float diag[2];
            {
                float u[2][kP];
                uint2 kb[4][2];  // phi(k)^T as bf16 B fragments: k-step ks (table t, buckets 4ks ..), n-tile r = key row g + 8r
                {
                    float phk[2][kR];
                    Rows<T, D> xk;
                    xk.load(a.k, row0, row_stride, n);
                    warp16::project_group<T, D>(xk, wpt, u);
                    features(u, d.beta, n, phk);
                    stream::put_tile_sums(zt + warp_id * ldZ, phk);
#pragma unroll
                    for (int ks = 0; ks < 4; ++ks)
#pragma unroll
                        for (int r = 0; r < 2; ++r)
                            kb[ks][r] = make_uint2(warp16::pack(phk[r][4 * ks], phk[r][4 * ks + 1]),
                                                   warp16::pack(phk[r][4 * ks + 2], phk[r][4 * ks + 3]));
                }
                Rows<T, D> xq;
                xq.load(a.q, row0, row_stride, n);
                warp16::project_group<T, D>(xq, wpt, u);
                features(u, d.beta, n, phq);
                // att = phi(q) phi(k)^T (bf16 operands, v35): B's column g of n-tile nt is key g + 8 nt.
                float att[2][4] = {};
#pragma unroll
                for (int ks = 0; ks < 4; ++ks) {
                    std::uint32_t af[4];
                    warp16::feature_frag(phq, ks, af);
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt) warp16::mma(att[nt], af, kb[ks][nt]);
                }
                stream::mask_diagonal(att);
#pragma unroll
                for (int r = 0; r < 2; ++r) diag[r] = att[0][2 * r] + att[0][2 * r + 1] + att[1][2 * r] + att[1][2 * r + 1];
            }
            __syncthreads();  // zt's tile sums

            // 2. den = phi(q) . (sum before the chunk + tiles 0 .. w-1) + the diagonal block's row sum.
            float den[2];
            {
                float zc[2][4] = {};
#pragma unroll
                for (int ks = 0; ks < 8; ++ks) {
                    std::uint32_t af[4];
                    feature_frag(phq, ks, af);
                    const int f = kR * t + 2 * ks;
                    const float2 tile = *reinterpret_cast<const float2*>(zt + g * ldZ + f);
                    mma(zc[0], af, tf32(tile.x), tf32(tile.y));
                    const float2 prev = g == 0 ? *reinterpret_cast<const float2*>(zt + before * ldZ + f) : make_float2(0.0f, 0.0f);
                    mma(zc[1], af, tf32(prev.x), tf32(prev.y));
                }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    // C column 2t + h of n-tile 0 is tile 2t + h; n-tile 1 has the sum before the chunk in column 0.
                    den[r] = sum_over_t(diag[r] + zc[1][2 * r] + (2 * t < warp_id ? zc[0][2 * r] : 0.0f) +
                                        (2 * t + 1 < warp_id ? zc[0][2 * r + 1] : 0.0f));
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) inv[r] = g + 8 * r < n ? 1.0f / den[r] : 0.0f;
            if (warp_id == Lay::kWarps - 1) {
                // The sum past the chunk into the other copy (read by every warp after the next chunk's
                // first barrier; this chunk's second barrier orders the write before those reads).
                const int after = 2 * Lay::kWarps + 1 - before;
                for (int f = lane_id(); f < kM; f += 32) {
                    float z = zt[before * ldZ + f];
                    for (int w = 0; w < Lay::kWarps; ++w) z += zt[w * ldZ + f];
                    zt[after * ldZ + f] = z;
                }
            }
            before = 2 * Lay::kWarps + 1 - before;
        }
        {
            // phi(q) / den, G and -(G . o) (the state's column D) as the chunk's rows.
            noncausal::put_features<FeatureTile>(phi_s, col0, phq, inv);
            Rows<T, D> xg, xo;
            xg.load(a.dout, row0, row_stride, n);
            xo.load(a.o, row0, row_stride, n);
            float go[2];
            stream::row_dots(xg, xo, go);
#pragma unroll
            for (int r = 0; r < 2; ++r) go[r] = -go[r];
            noncausal::put_values<T, D, WideTile>(rows_s, col0, xg, go);
        }
        __syncthreads();  // the chunk's features and rows

        // 3. The chunk into the warp's slice of U.
        u_slice.template add<FeatureTile, WideTile, kChunk>(phi_s, rows_s);
        __syncthreads();  // the tiles and zt's tile sums read before the next chunk writes them
    }
    u_slice.store(a.seg_out + (bh * d.nseg + seg) * static_cast<long long>(kM) * (D + 1));
}

}  // namespace racesp::cuda
