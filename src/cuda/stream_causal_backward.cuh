// v12 (experiments/gpu-notes.md): the causal backward pass of the kernel normalisation on warp
// tiles, for the sizes of v9-v11 (bf16/fp16, P = L = 4, D = 64 or 128), on 16-bit tensor-core
// operands since v38 (warp_tiles16.cuh). One block per (segment, head, batch entry) walks its
// segment from the end in chunks of 64 tokens (4 tiles of 16) with both states in shared memory:
//   S: the forward state before the chunk (the keys before it). It starts as the state after the
//      segment and loses each chunk's keys; the segment's first chunk gets the exact start state
//      from the float64 scan instead, so rounding left by the subtractions ends there.
//   U: the backward state after the chunk (the queries after it). It starts as the state after the
//      segment (float64 scan) and gains each chunk's queries: additions only.
// Each state is kept in float32 (the sums) and as a bf16 copy of its first D columns (the
// operands); its column D (the normaliser's) is read from the float32 copy, as the non-causal
// passes do. With Wm_i = [G_i, c_i] / den_i, c_i = -(G_i . o_i) from the forward's o (v14):
//   dL/dphi(q_i) = (G_i S[:, :D]^T + c_i S[:, D]^T + sum_{j <= i} (G_i . v_j + c_i) phi(k_j)) / den_i,
//   dL/dphi(k_j) = [v_j, 1] U^T + sum_{i >= j} (G_i . v_j + c_i) phi(q_i) / den_i,
//   dv_j = phi(k_j) U[:, :D] + sum_{i >= j} (phi(k_j) . phi(q_i) / den_i) G_i,
//   U += sum_i (phi(q_i) / den_i)^T [G_i, c_i]:
// the rows G and v stay the exact 16-bit operands they are and 1 / den scales the features (as
// the non-causal query totals since v27), so the parts of Wm that nearly cancel are rounded alike
// (fp16 rows: G . o from G rounded to bf16, as the products take it: stream::row_dots).
// Warps 0-3 take the queries of tile w, warps 4-7 the keys of tile w - 4. Per chunk:
//   1. all: rows in, features; keys: phi(k) and [v, 1] into the chunk's tiles; barrier;
//   2. all: S minus the chunk's keys (each warp a slice of the state); barrier;
//   3. queries: den from S[:, D] and the blocks phi(q_i) phi(k_j)^T (j <= i); the blocks scaled by
//      1 / den_i and the blocks G_i . v_j + c_i into shared memory for the keys; phi(q) / den and
//      [G, c] into the chunk's tiles; keys: the state terms of dL/dphi(k) and dv; barrier;
//   4. queries: the state terms and the chunk's keys j <= i, dq; keys: the chunk's queries i >= j,
//      dk and dv (v75: from dL/dphi on, one code path for both roles); all: U plus the chunk's
//      queries; barrier.
// v55: the two state updates (S minus the chunk's keys, U plus its queries) are wgmma products
// per warpgroup from the feature and row tiles (wgmma.cuh; the tiles and the states' bf16 copies
// in its layout, wgmma::Blocked); every other operand is read with ldmatrix, from the same
// tiles (on wgmma the state products made v12 slower, v54). Along the features the tiles and states keep the order
// of the C tiles over features (feature_pos), along the D columns that of the C tiles over
// columns (column_pos): one layout serves both products of a state (k over features, k over
// columns: ldmatrix with and without .trans), and every product's output is in the order that
// dphi_of and store_rows read. The query warps copy the chunk's o rows into shared memory with
// cp.async at step 1 and read them at step 3 (v23); the next chunk's q or k rows are loaded at
// the end of step 4 (v26).
#pragma once

#include "stream_noncausal.cuh"
#include "wgmma.cuh"

namespace racesp::cuda {

template <class T, int D>
struct CausalBackwardLayout {
    static constexpr int kWarps = 8, kThreads = 32 * kWarps;
    static constexpr int kTiles = 4, kChunk = kTiles * warp::kTile;  // 64 tokens
    static constexpr int NTD = D / 8, NTW = NTD + 1, KSD = D / 16;
    // v54: the bf16 tiles and copies in wgmma's layout (wgmma::Blocked, which ldmatrix reads too):
    // features [token][feature], [v, 1] and [G, c] [token][column] (D, column D in two parts,
    // zeros up to an even number of n-tiles: each warpgroup takes half in the states' updates),
    // the states' copies [feature][column] (D columns).
    static constexpr int kW = StreamLayout<T, D>::kW;
    using FeatureTile = typename StreamLayout<T, D>::FeatureTile;
    using WideTile = typename StreamLayout<T, D>::WideTile;
    using StateCopy = wgmma::Blocked<D>;
    static constexpr int ldS = D + 8;  // float32 states [feature][column]: 8 mod 32 words, column D at D
    static constexpr int kPairs = kTiles * (kTiles + 1) / 2;  // (query tile i, key tile j <= i)
    static constexpr int ldP = 24;                            // bf16 blocks [query][key]: rows 48 bytes apart
    static constexpr int kBlock = warp::kTile * ldP;
    std::size_t red, wpu, wpd, s, u, sb, ub, phiK, phiQ, vt, gt, pairs, stage, total;
    __host__ __device__ constexpr CausalBackwardLayout()
        : red(0), wpu(0), wpd(0), s(0), u(0), sb(0), ub(0), phiK(0), phiQ(0), vt(0), gt(0), pairs(0), stage(0), total(0) {
        std::size_t at = 0;
        auto take = [&](std::size_t bytes) {
            const std::size_t here = at;
            at += (bytes + 127) / 128 * 128;
            return here;
        };
        const std::size_t b16 = sizeof(__nv_bfloat16);
        red = take(kWarps * sizeof(double));
        wpu = take(KSD * 2 * 32 * sizeof(uint4));
        wpd = take(NTD * 32 * sizeof(uint2));
        s = take(warp::kM * ldS * sizeof(float));
        u = take(warp::kM * ldS * sizeof(float));
        sb = take(warp::kM * D * b16);
        ub = take(warp::kM * D * b16);
        phiK = take(kChunk * warp::kM * b16);
        phiQ = take(kChunk * warp::kM * b16);
        vt = take(kChunk * kW * b16);
        gt = take(kChunk * kW * b16);
        pairs = take(kPairs * 2 * kBlock * b16);
        stage = take(kTiles * warp::StagedRows<T, D>::kBytes);  // the query warps' o rows: 200 KB in all at D=128
        total = at;
    }
};

namespace causal_backward {

using bf16 = __nv_bfloat16;
using noncausal::column_pos;
using noncausal::ldmatrix;
using noncausal::ldmatrix_t;

using noncausal::feature_pos;

// A state (M x (D + 1), float32 from the scan) into the float32 copy x and the bf16 copy xb. All
// of a thread's loads (33 at D=128) go out before its stores: one global latency per state (v41:
// element by element, the two loads at the start and the one at the segment's first chunk were
// ~5% of the kernel's stall samples; v60: batches of 8, five latencies, became one).
template <int D, int ldS, class StateCopy, int kThreads>
__device__ void load_state(float* x, bf16* xb, const float* src) {
    constexpr int kSize = warp::kM * (D + 1), kBatch = (kSize + kThreads - 1) / kThreads;
    for (int e0 = threadIdx.x; e0 < kSize; e0 += kBatch * kThreads) {
        float v[kBatch];
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
            const int e = e0 + k * kThreads;
            v[k] = e < kSize ? __ldg(src + e) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
            const int e = e0 + k * kThreads;
            if (e >= kSize) continue;
            const int f = feature_pos(e / (D + 1)), c = e % (D + 1);
            if (c < D) {
                x[f * ldS + column_pos(c)] = v[k];
                xb[StateCopy::at(f, column_pos(c))] = __float2bfloat16(v[k]);
            } else {
                x[f * ldS + D] = v[k];
            }
        }
    }
}

// x (float32) and its bf16 copy xb += sign * acc, the warp's part of phi^T rows over the chunk
// (add_chunk): m-tile mt of the state and the n-tiles from kHalf * kS on (column D's, the last, is
// the sum of the rows' two parts; the n-tile after it in the second half is padding). v41: the
// n-tiles are compile-time constants, so the read-modify-write has no branches, and the float32
// loads go out together before the sums and stores (with the half chosen at run time, each
// n-tile had its own branches and its load's full latency: ~30% of the kernel's stall samples).
template <int D, int ldS, class StateCopy, int kHalf, int kS>
__device__ __forceinline__ void update_half(float* x, bf16* xb, float sign, const float (&acc)[kS][4], int mt) {
    constexpr int NTW = D / 8 + 1, nt0 = kHalf * kS;
    constexpr int kCount = NTW - nt0 < kS ? NTW - nt0 : kS;
    constexpr bool kColumnD = nt0 + kCount == NTW;  // the last n-tile is column D's
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
    constexpr int kFull = kColumnD ? kCount - 1 : kCount;  // n-tiles of the D columns
    float2 old[kFull][2];
#pragma unroll
    for (int s = 0; s < kFull; ++s)
#pragma unroll
        for (int h = 0; h < 2; ++h)
            old[s][h] = *reinterpret_cast<const float2*>(x + (16 * mt + g + 8 * h) * ldS + 8 * (nt0 + s) + 2 * t);
#pragma unroll
    for (int s = 0; s < kFull; ++s)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int f = 16 * mt + g + 8 * h;
            const float2 v = make_float2(old[s][h].x + sign * acc[s][2 * h], old[s][h].y + sign * acc[s][2 * h + 1]);
            *reinterpret_cast<float2*>(x + f * ldS + 8 * (nt0 + s) + 2 * t) = v;
            *reinterpret_cast<std::uint32_t*>(xb + StateCopy::at(f, 8 * (nt0 + s) + 2 * t)) = warp16::pack(v.x, v.y);
        }
    if constexpr (kColumnD) {
        if (t == 0)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                x[(16 * mt + g + 8 * h) * ldS + D] += sign * (acc[kCount - 1][2 * h] + acc[kCount - 1][2 * h + 1]);
    }
}
// The whole block's sum: phi^T rows on wgmma (v55), the chunk alone as a StateSlice (warpgroup h
// the n-tiles [h kS, (h + 1) kS), each warp m-tile w % 4 of them), then each warp's
// read-modify-write of its part.
template <class Lay>
__device__ __forceinline__ void add_chunk(float* x, bf16* xb, float sign, const bf16* phi, const bf16* rows) {
    constexpr int D = Lay::NTD * 8, kS = Lay::kW / 16;
    const int w = threadIdx.x / 32;
    noncausal::StateSlice<D> sum;
    sum.template add<Lay::kChunk>(phi, rows);
    const float(&acc)[kS][4] = *reinterpret_cast<const float(*)[kS][4]>(&sum.d[0]);
    if (w < 4) update_half<D, Lay::ldS, typename Lay::StateCopy, 0, kS>(x, xb, sign, acc, w % 4);
    else update_half<D, Lay::ldS, typename Lay::StateCopy, 1, kS>(x, xb, sign, acc, w % 4);
}

// acc[nt] += A X[:, :D] for the D columns' n-tiles, A's k-step ks over the features given by
// `frag(ks, a)`, X's bf16 copy read with k along its rows (.trans). (On wgmma, v54-v55, these
// products made v12 slower: 8.49 -> 9.14 ms at 2M.)
template <int D, class StateCopy, class Frag>
__device__ __forceinline__ void times_state(Frag frag, const bf16* xb, float (&acc)[D / 8][4]) {
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
        std::uint32_t a[4];
        frag(ks, a);
#pragma unroll
        for (int nt = 0; nt < D / 8; nt += 2) {
            std::uint32_t b[4];
            ldmatrix_t(b, xb + StateCopy::at(16 * ks + i + 8 * (j % 2), 8 * (nt + j / 2)));
            warp16::mma(acc[nt], a, make_uint2(b[0], b[1]));
            warp16::mma(acc[nt + 1], a, make_uint2(b[2], b[3]));
        }
    }
}
// acc[nf] += R X[:, :D]^T over the 8 n-tiles of features, R's k-step ks over the D columns
// given by `frag(ks, a)`, X's bf16 copy read with k along its columns (no .trans).
template <int D, class StateCopy, class Frag>
__device__ __forceinline__ void times_state_t(Frag frag, const bf16* xb, float (&acc)[8][4]) {
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        std::uint32_t a[4];
        frag(ks, a);
#pragma unroll
        for (int nf = 0; nf < 8; nf += 2) {
            std::uint32_t b[4];
            ldmatrix(b, xb + StateCopy::at(8 * nf + i + 8 * (j / 2), 16 * ks + 8 * (j % 2)));
            warp16::mma(acc[nf], a, make_uint2(b[0], b[1]));
            warp16::mma(acc[nf + 1], a, make_uint2(b[2], b[3]));
        }
    }
}

// acc[nt] += A tile over NT n-tiles, A a 16 x 16 block over 16 tokens of a tile (rows row0 ..
// row0 + 15 of a wgmma::Blocked tile) read with k along its rows (.trans).
template <int NT, class Tile>
__device__ __forceinline__ void times_tile(const std::uint32_t (&a)[4], const bf16* tile, int row0, float (&acc)[NT][4]) {
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
        std::uint32_t b[4];
        ldmatrix_t(b, tile + Tile::at(row0 + i + 8 * (j % 2), 8 * (nt + j / 2)));
        warp16::mma(acc[nt], a, make_uint2(b[0], b[1]));
        warp16::mma(acc[nt + 1], a, make_uint2(b[2], b[3]));
    }
}

// The 16 x 16 blocks of query tile i against key tile j <= i that the keys' warps read, computed
// by the queries' warp: block 0 = phi(q) phi(k)^T / den (rows: queries), block 1 = G . v + c,
// masked on the diagonal, bf16, stored [query][key] from their C tiles.
__host__ __device__ constexpr int pair_of(int i, int j) { return i * (i + 1) / 2 + j; }
template <int ldP>
__device__ __forceinline__ void put_block(bf16* blk, const float (&c)[2][4]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
            *reinterpret_cast<std::uint32_t*>(blk + (g + 8 * h) * ldP + 8 * nt + 2 * t) = warp16::pack(c[nt][2 * h], c[nt][2 * h + 1]);
}
// A block as the queries' A operand (rows: queries, k: keys) or, transposed, the keys' (rows:
// keys, k: queries).
template <int ldP>
__device__ __forceinline__ void block_for_queries(const bf16* blk, std::uint32_t (&a)[4]) {
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
    ldmatrix(a, blk + (i + 8 * (j % 2)) * ldP + 8 * (j / 2));
}
template <int ldP>
__device__ __forceinline__ void block_for_keys(const bf16* blk, std::uint32_t (&a)[4]) {
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
    ldmatrix_t(a, blk + (i + 8 * (j / 2)) * ldP + 8 * (j % 2));
}

}  // namespace causal_backward

template <class T, int D>
__global__ void __launch_bounds__(CausalBackwardLayout<T, D>::kThreads, 1) causal_backward_kernel(const SegmentArgs<T> a) {
    using Lay = CausalBackwardLayout<T, D>;
    using namespace warp;
    using namespace causal_backward;
    constexpr Lay lay;
    constexpr int NTD = Lay::NTD, KSD = Lay::KSD, kChunk = Lay::kChunk;
    constexpr int ldS = Lay::ldS, ldP = Lay::ldP, kBlock = Lay::kBlock;
    using FeatureTile = typename Lay::FeatureTile;
    using WideTile = typename Lay::WideTile;
    using StateCopy = typename Lay::StateCopy;
    extern __shared__ __align__(128) unsigned char sm[];
    double* red = reinterpret_cast<double*>(sm + lay.red);
    uint4* wpu = reinterpret_cast<uint4*>(sm + lay.wpu);
    uint2* wpd = reinterpret_cast<uint2*>(sm + lay.wpd);
    float* S = reinterpret_cast<float*>(sm + lay.s);
    float* U = reinterpret_cast<float*>(sm + lay.u);
    bf16* Sb = reinterpret_cast<bf16*>(sm + lay.sb);
    bf16* Ub = reinterpret_cast<bf16*>(sm + lay.ub);
    bf16* phiK = reinterpret_cast<bf16*>(sm + lay.phiK);
    bf16* phiQ = reinterpret_cast<bf16*>(sm + lay.phiQ);
    bf16* vt = reinterpret_cast<bf16*>(sm + lay.vt);
    bf16* gt = reinterpret_cast<bf16*>(sm + lay.gt);
    bf16* pairs = reinterpret_cast<bf16*>(sm + lay.pairs);
    const StagedRows<T, D> stage_o{reinterpret_cast<uint4*>(sm + lay.stage) + (threadIdx.x / 32 % 4) * (StagedRows<T, D>::kBytes / 16)};

    const Dims& d = a.d;
    const stream::SegmentBlock<D> blk(d);
    const int seg = blk.seg;
    const long long row_stride = blk.row_stride, bh = blk.bh;
    const long long state_size = static_cast<long long>(kM) * (D + 1);
    const int warp_id = threadIdx.x / 32, g = lane_id() / 4, t = lane_id() % 4;
    // The role from a value shuffled from lane 0, which the compiler knows to be the same across the
    // warp: with `warp_id < 4` ptxas spills 28 bytes at D=128, with the shuffle 8.
    const bool queries = __shfl_sync(0xffffffffu, warp_id, 0) < 4;
    const int tile = warp_id % 4;  // the warp's tile in the chunk (queries or keys)
    const float* s_starts = a.s_start + bh * d.nseg * a.s_seg_stride;
    const float* u_starts = a.u_start + bh * d.nseg * a.u_seg_stride;
    const float* wp = a.planes + blk.h * static_cast<long long>(kLP) * D;

    noncausal::arrange_projection<T, D>(wpu, wp);
    noncausal::arrange_planes_out<D>(wpd, wp);
    // The states after the segment: the next segment's start states, or after the shard's end.
    const bool last = seg + 1 == d.nseg;
    load_state<D, ldS, StateCopy, Lay::kThreads>(S, Sb, last ? a.s_end + bh * state_size : s_starts + (seg + 1) * a.s_seg_stride);
    load_state<D, ldS, StateCopy, Lay::kThreads>(U, Ub, last ? a.u_end + bh * state_size : u_starts + (seg + 1) * a.u_seg_stride);
    noncausal::zero_padding<D, WideTile, Lay::kW>(vt, kChunk);
    noncausal::zero_padding<D, WideTile, Lay::kW>(gt, kChunk);
    wgmma::proxy_fence();  // every tile and copy written with ordinary stores is read by wgmma too
    __syncthreads();

    double dbeta = 0.0;
    const int chunks = (blk.end - blk.begin + kChunk - 1) / kChunk;
    // The warp's tile of chunk ci: its rows and its first row (clamped into the segment).
    auto tile_rows = [&](int ci) { return max(0, min(kTile, blk.end - (blk.begin + ci * kChunk + kTile * tile))); };
    auto tile_row = [&](int ci) { return blk.row_of(min(blk.begin + ci * kChunk + kTile * tile, blk.end - 1)); };
    // The features' order in the states: lane t's bucket b of a row.
    auto state_col_d = [&](const float* x, int b) { return x[feature_pos(kR * t + b) * ldS + D]; };
    // Column D of a state by the C tiles over features: n-tile nf, element e.
    auto col_d_at = [&](const float* x, int nf, int e) { return x[(8 * nf + 2 * t + e % 2) * ldS + D]; };
    const float one[2] = {1.0f, 1.0f};
    // The warp's q or k rows, which step 1 needs first; v26: loaded at the end of step 4.
    Rows<T, D> x1;
    x1.load(queries ? a.q : a.k, tile_row(chunks - 1), row_stride, tile_rows(chunks - 1));
    for (int ci = chunks - 1; ci >= 0; --ci) {
        const int n = tile_rows(ci);
        const long long row0 = tile_row(ci);
        const int col0 = kTile * tile;
        // 1. Features; queries keep dout (x2) for steps 3 and 4, keys v for step 3.
        float u[2][kP], phi[2][kR];
        Rows<T, D> x2;
        x2.load(queries ? a.dout : a.v, row0, row_stride, n);
        if (queries) stage_o.fetch(a.o, row0, row_stride, n);  // read at step 3
        warp16::project<T, D>(x1, wpu, u);
        features<Recip::approx>(u, d.beta, n, phi);
        if (!queries) {
            noncausal::put_features<FeatureTile>(phiK, col0, phi, one);
            const float ones[2] = {g < n ? 1.0f : 0.0f, g + 8 < n ? 1.0f : 0.0f};
            noncausal::put_values<T, D, WideTile>(vt, col0, x2, ones);
        }
        wgmma::proxy_fence();  // and U's copy (step 4)
        __syncthreads();  // phiK, [v, 1] of the chunk

        // 2. S before the chunk.
        if (ci == 0) load_state<D, ldS, StateCopy, Lay::kThreads>(S, Sb, s_starts + seg * a.s_seg_stride);
        else add_chunk<Lay>(S, Sb, -1.0f, phiK, vt);
        __syncthreads();  // S (its copy is fenced for wgmma after step 3)

        // 3. Queries: den, the blocks, the chunk's [G, c] and phi(q) / den. Keys: the state terms.
        float dph[8][4] = {};  // C tiles over features: the queries' bracket, the keys' dL/dphi(k)
        float dv[NTD][4] = {};  // keys
        float inv[2], c[2];     // queries: 1 / den, -(G . o)
        const int i8 = lane_id() % 8, j8 = lane_id() / 8;  // ldmatrix: lane 8 j8 + i8 addresses row i8 of block j8
        if (queries) {
            std::uint32_t qa[4][4];  // phi(q) as A fragments over the features
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) warp16::feature_frag(phi, ks, qa[ks]);
            float den[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float z = 0.0f;
#pragma unroll
                for (int b = 0; b < kR; ++b) z += phi[r][b] * state_col_d(S, b);
                den[r] = z;
            }
            float pk[Lay::kTiles][2][4];  // phi(q) phi(k_j)^T, masked
#pragma unroll
            for (int j = 0; j < Lay::kTiles; ++j) {
                if (j > tile) continue;
                float half[2][2][4] = {};  // even and odd k-steps (v23)
#pragma unroll
                for (int ks = 0; ks < 4; ++ks) {
                    std::uint32_t b[4];  // phi(k_j) with k along the features: keys 8 (j8 / 2) + i8
                    ldmatrix(b, phiK + FeatureTile::at(kTile * j + i8 + 8 * (j8 / 2), 16 * ks + 8 * (j8 % 2)));
                    warp16::mma(half[ks % 2][0], qa[ks], make_uint2(b[0], b[1]));
                    warp16::mma(half[ks % 2][1], qa[ks], make_uint2(b[2], b[3]));
                }
                stream::halves_sum(half, pk[j]);
                if (j == tile) stream::mask_diagonal(pk[j]);
#pragma unroll
                for (int r = 0; r < 2; ++r) den[r] += pk[j][0][2 * r] + pk[j][0][2 * r + 1] + pk[j][1][2 * r] + pk[j][1][2 * r + 1];
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const float whole = sum_over_t(den[r]);  // on every lane: a shuffle of the whole warp
                inv[r] = g + 8 * r < n ? fast_rcp(whole) : 0.0f;
            }
            {
                Rows<T, D> xo;
                stage_o.read(xo);
                stream::row_dots(x2, xo, c);
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) c[r] = -c[r];
#pragma unroll
            for (int j = 0; j < Lay::kTiles; ++j) {
                if (j > tile) continue;
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) pk[j][nt][e] *= inv[e / 2];
                put_block<ldP>(pairs + 2 * pair_of(tile, j) * kBlock, pk[j]);
            }
            noncausal::put_features<FeatureTile>(phiQ, col0, phi, inv);
            noncausal::put_values<T, D, WideTile>(gt, col0, x2, c);
            for (int j = 0; j <= tile; ++j) {
                float half[2][2][4] = {};  // G . v_j over even and odd k-steps
#pragma unroll
                for (int ks = 0; ks < KSD; ++ks) {
                    std::uint32_t af[4], b[4];
                    warp16::rows_frag_bf16<T, D>(x2, ks, af);
                    ldmatrix(b, vt + WideTile::at(kTile * j + i8 + 8 * (j8 / 2), 16 * ks + 8 * (j8 % 2)));
                    warp16::mma(half[ks % 2][0], af, make_uint2(b[0], b[1]));
                    warp16::mma(half[ks % 2][1], af, make_uint2(b[2], b[3]));
                }
                float att[2][4];
                stream::halves_sum(half, att);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) att[nt][e] += c[e / 2];
                if (j == tile) stream::mask_diagonal(att);
                put_block<ldP>(pairs + (2 * pair_of(tile, j) + 1) * kBlock, att);
            }
        } else {
            // dv = phi(k) U[:, :D], dL/dphi(k) = v U[:, :D]^T + U[:, D].
            times_state<D, StateCopy>([&](int ks, std::uint32_t(&af)[4]) { warp16::feature_frag(phi, ks, af); }, Ub, dv);
            times_state_t<D, StateCopy>([&](int ks, std::uint32_t(&af)[4]) { warp16::rows_frag_bf16<T, D>(x2, ks, af); }, Ub, dph);
#pragma unroll
            for (int nf = 0; nf < 8; ++nf)
#pragma unroll
                for (int e = 0; e < 4; ++e) dph[nf][e] += col_d_at(U, nf, e);
        }
        wgmma::proxy_fence();  // and S's copy (step 2)
        __syncthreads();  // the blocks, phiQ, [G, c]

        // 4. The chunk's own terms, the gradients out, and U before the chunk.
        if (queries) {
            times_state_t<D, StateCopy>([&](int ks, std::uint32_t(&af)[4]) { warp16::rows_frag_bf16<T, D>(x2, ks, af); }, Sb, dph);
            for (int j = 0; j <= tile; ++j) {
                std::uint32_t af[4];
                block_for_queries<ldP>(pairs + (2 * pair_of(tile, j) + 1) * kBlock, af);  // G . v_j + c
                times_tile<8, FeatureTile>(af, phiK, kTile * j, dph);
            }
#pragma unroll
            for (int nf = 0; nf < 8; ++nf)
#pragma unroll
                for (int e = 0; e < 4; ++e) dph[nf][e] = (dph[nf][e] + c[e / 2] * col_d_at(S, nf, e)) * inv[e / 2];
        } else {
            for (int i = tile; i < Lay::kTiles; ++i) {
                std::uint32_t af[4];
                block_for_keys<ldP>(pairs + 2 * pair_of(i, tile) * kBlock, af);  // phi(k) phi(q_i)^T / den_i
                times_tile<NTD, WideTile>(af, gt, kTile * i, dv);
                block_for_keys<ldP>(pairs + (2 * pair_of(i, tile) + 1) * kBlock, af);  // v . G_i + c_i
                times_tile<8, FeatureTile>(af, phiQ, kTile * i, dph);
            }
            store_rows<T, D>(a.dv, row0, row_stride, n, dv, one);
        }
        {
            // v75: both roles from dL/dphi on: dL/dz, then dq or dk = dz Wp.
            float dphi[2][kR], dz[2][kP], dx[NTD][4];
            stream::dphi_of(dph, dphi);
            dbeta += features_backward(u, phi, dphi, d.beta, dz);
            warp16::planes_out<D>(dz, wpd, dx);
            store_rows<T, D>(queries ? a.dq : a.dk, row0, row_stride, n, dx, one);
        }
        if (ci > 0) x1.load(queries ? a.q : a.k, tile_row(ci - 1), row_stride, tile_rows(ci - 1));
        add_chunk<Lay>(U, Ub, 1.0f, phiQ, gt);
        __syncthreads();  // (U's copy is fenced for wgmma after the next chunk's step 1)  // U; the chunk's tiles read before the next chunk's step 1
    }

    const double s = block_sum(dbeta, red, Lay::kWarps);
    if (threadIdx.x == 0) a.dbeta_part[bh * d.nseg + seg] = s;
}

}  // namespace racesp::cuda
