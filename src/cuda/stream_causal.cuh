// v10 (experiments/gpu-notes.md): the causal forward on warp tiles, for the sizes of v9's kernels
// (bf16/fp16, kernel normalisation, P = L = 4, D = 64 or 128), on 16-bit tensor-core operands
// (v34) and, since v53/v58, Hopper's warpgroup products (wgmma.cuh). One block per (segment,
// head, batch entry) walks its segment in chunks of 128 tokens, warp w on tokens 16w .. 16w + 15,
// warps 0-3 and 4-7 two warpgroups of 64 queries each:
//
//   o_i = (phi(q_i) S + sum_{j <= i in the chunk} (phi(q_i) . phi(k_j)) [v_j, 1]) normalised,
//
// with S the state before the chunk (DESIGN.md §4). Per chunk:
//   1. each warp computes its keys' features into the feature tile and [v, 1] into the wide tile
//      (both wgmma::Blocked, read by wgmma); it also computes its queries' features, kept in
//      registers (v74: both projections a warpgroup's wgmma, warp16::project_group); barrier;
//   2. each warpgroup: num = phi(q) S (S's bf16 copy) plus the chunk's keys in halves of 64,
//      att = phi(q) phi(k)^T masked and rounded to bf16 in registers, times [v, 1]
//      (chunk_products); each warp normalises and stores its o rows; the chunk is added to S,
//      float32, the two warpgroups' accumulators (noncausal::StateSlice); barrier;
//   3. each warp writes its part of S, as bf16, into the copy for the next chunk, beside step 1
//      of the next chunk (no barrier between them: they touch different buffers).
// The state carries over in float32; only the products' operands are bf16 (fp16 inputs too: the
// state's sums overflow fp16), as in the non-causal forward. Until v57 the intra-chunk products
// were mma.sync, warp w on the key tiles 0..w (the triangle's longest warp had 8 blocks, the
// shortest 1).
//
// (v11 ran the causal query totals on this sweep, recomputing o; v14 reads the forward's o
// instead: stream_causal_totals.cuh. v50: given a.inv_den, the sweep also writes each query's
// 1 / den there, for those totals.)
#pragma once

#include "stream_noncausal.cuh"
#include "wgmma.cuh"

namespace racesp::cuda {

template <class T, int D>
struct CausalLayout {
    using Base = NoncausalLayout<T, D>;
    static constexpr int kWarps = Base::kWarps, kThreads = Base::kThreads, kChunk = Base::kChunk;
    static constexpr int NTW = Base::NTW, kN = Base::kW;
    // The chunk's features and [v, 1] tiles; S's bf16 copy [feature][column] is a WideTile too
    // (features at feature_pos, feature_frag's k order), so num comes out as store_rows reads it.
    using FeatureTile = typename Base::FeatureTile;
    using WideTile = typename Base::WideTile;
    std::size_t wpt, phi, vb, sb, stage, total;
    __host__ __device__ constexpr CausalLayout() : wpt(0), phi(0), vb(0), sb(0), stage(0), total(0) {
        std::size_t at = 0;
        auto take = [&](std::size_t bytes) {
            const std::size_t here = at;
            at += (bytes + 127) / 128 * 128;
            return here;
        };
        const std::size_t b16 = sizeof(__nv_bfloat16);
        wpt = take(32 * D * b16);  // project_group's planes
        phi = take(kChunk * warp::kM * b16);
        vb = take(kChunk * kN * b16);
        sb = take(warp::kM * kN * b16);
        stage = take(2 * kWarps * warp::StagedRows<T, D>::kBytes);  // the next chunk's k and v (v21)
        total = at;
    }
};

namespace causal_forward {

using bf16 = __nv_bfloat16;

// num = phi(q) S + sum_{j <= i in the chunk} (phi(q_i) . phi(k_j)) [v_j, 1] for the warpgroup's 64
// queries (the warp's 16 rows), all on wgmma (v53: phi(q) S, S's bf16 copy N-major; v58: the
// chunk's own keys, in halves of 64, as FlashAttention-3 reuses its scores: att = phi(q)
// phi(k)^T (m64n64k16, phi(k) K-major from the feature tile), masked on the diagonal half and
// rounded to bf16 in registers as the A operand of att [v, 1] (m64n(D+8)k16, [v, 1] N-major).
// Warpgroup `group` sees the halves 0 .. group.
template <class FeatureTile, class WideTile, int NTW>
__device__ __forceinline__ void chunk_products(const float (&phq)[2][warp::kR], const bf16* phi, const bf16* vb,
                                               const bf16* sb, int group, float (&num)[NTW][4]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4, row0 = 16 * (threadIdx.x / 32 % 4);
    float(&flat)[4 * NTW] = *reinterpret_cast<float(*)[4 * NTW]>(&num[0][0]);
    std::uint32_t qa[4][4];
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) warp16::feature_frag(phq, ks, qa[ks]);
    wgmma::fence(flat);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
        wgmma::RegsTimesShared<8 * NTW>::template run<1>(
            flat, qa[ks], wgmma::descriptor(sb + WideTile::at(16 * ks, 0), WideTile::kRowGroupBytes, WideTile::kBlockBytes));
    for (int h = 0; h <= group; ++h) {
        float att[8][4] = {};  // 16 queries x 64 keys: n-tile i holds keys 64 h + 8 i + 2t + e % 2
        float(&att_flat)[32] = *reinterpret_cast<float(*)[32]>(&att[0][0]);
        wgmma::fence(att_flat);
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
            wgmma::RegsTimesShared<64>::template run<0>(
                att_flat, qa[ks],
                wgmma::descriptor(phi + FeatureTile::at(64 * h, 16 * ks), FeatureTile::kBlockBytes, FeatureTile::kRowGroupBytes));
        wgmma::commit_and_wait(att_flat);  // (and phi(q) S's, issued before)
        if (h == group)
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (8 * i + 2 * t + e % 2 > row0 + g + 8 * (e / 2)) att[i][e] = 0.0f;
        wgmma::fence(flat);
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            const std::uint32_t a[4] = {warp16::pack(att[2 * s][0], att[2 * s][1]), warp16::pack(att[2 * s][2], att[2 * s][3]),
                                        warp16::pack(att[2 * s + 1][0], att[2 * s + 1][1]),
                                        warp16::pack(att[2 * s + 1][2], att[2 * s + 1][3])};
            wgmma::RegsTimesShared<8 * NTW>::template run<1>(
                flat, a,
                wgmma::descriptor(vb + WideTile::at(64 * h + 16 * s, 0), WideTile::kRowGroupBytes, WideTile::kBlockBytes));
        }
    }
    wgmma::commit_and_wait(flat);
}

}  // namespace causal_forward

template <class T, int D>
__global__ void __launch_bounds__(CausalLayout<T, D>::kThreads, 1) causal_sweep_kernel(const SegmentArgs<T> a) {
    using Lay = CausalLayout<T, D>;
    using namespace warp;
    using causal_forward::bf16;
    using FeatureTile = typename Lay::FeatureTile;
    using WideTile = typename Lay::WideTile;
    constexpr Lay lay;
    constexpr int NTW = Lay::NTW, kChunk = Lay::kChunk, kN = Lay::kN;
    extern __shared__ __align__(128) unsigned char sm[];
    std::uint32_t* wpt = reinterpret_cast<std::uint32_t*>(sm + lay.wpt);
    bf16* phi_s = reinterpret_cast<bf16*>(sm + lay.phi);
    bf16* vb = reinterpret_cast<bf16*>(sm + lay.vb);
    bf16* sb = reinterpret_cast<bf16*>(sm + lay.sb);
    constexpr int kSlot = StagedRows<T, D>::kBytes / 16;
    const StagedRows<T, D> stage_k{reinterpret_cast<uint4*>(sm + lay.stage) + (threadIdx.x / 32) * kSlot};
    const StagedRows<T, D> stage_v{stage_k.slot + Lay::kWarps * kSlot};

    const Dims& d = a.d;
    const stream::SegmentBlock<D> blk(d);
    const int seg = blk.seg, seg_begin = blk.begin, seg_end = blk.end;
    const long long row_stride = blk.row_stride, bh = blk.bh;
    const int warp_id = threadIdx.x / 32, g = lane_id() / 4;
    // The warpgroup, from a value shuffled from lane 0 that the compiler knows to be the same across
    // the warp (otherwise it takes chunk_products' loop for divergent and serializes every wgmma).
    const int group = __shfl_sync(0xffffffffu, warp_id, 0) / 4;
    const float* s_start = a.s_start + bh * d.nseg * a.s_seg_stride + seg * a.s_seg_stride;

    noncausal::arrange_projection_tile<T, D>(wpt, a.planes + blk.h * static_cast<long long>(kLP) * D);
    noncausal::zero_padding<D, WideTile, kN>(vb, kChunk);
    noncausal::StateSlice<D> state;  // S, float32, the warpgroups' accumulators
    state.load(s_start);
    state.store_copy(sb);
    // The warp's tile of the chunk at c0: its first row (clamped into the segment) and rows.
    auto tile_row = [&](int c0) { return blk.row_of(min(c0 + kTile * warp_id, seg_end - 1)); };
    auto tile_rows = [&](int c0) { return max(0, min(kTile, seg_end - c0 - kTile * warp_id)); };
    stage_k.fetch(a.k, tile_row(seg_begin), row_stride, tile_rows(seg_begin));
    stage_v.fetch(a.v, tile_row(seg_begin), row_stride, tile_rows(seg_begin));
    wgmma::proxy_fence();  // wpt and vb's padding are read by wgmma
    __syncthreads();

    for (int c0 = seg_begin; c0 < seg_end; c0 += kChunk) {
        const int n = tile_rows(c0);
        const long long row0 = tile_row(c0);
        const bool more = c0 + kChunk < seg_end;
        const int col0 = kTile * warp_id;
        // 1. Keys: features (phi_s), [v, 1] (vb); then the queries' features. The next
        // chunk's keys and values are copied into the warp's slots once these have been used.
        float phq[2][kR];
        {
            Rows<T, D> xk, xv;
            Rows<T, D> xq;
            xq.load(a.q, row0, row_stride, n);
            stage_k.read(xk);
            stage_v.read(xv);
            float u[2][kP], phk[2][kR];
            warp16::project_group<T, D>(xk, wpt, u);
            if (more) stage_k.fetch(a.k, tile_row(c0 + kChunk), row_stride, tile_rows(c0 + kChunk));
            features<Recip::approx>(u, d.beta, n, phk);
            const float one[2] = {1.0f, 1.0f};
            noncausal::put_features<FeatureTile>(phi_s, col0, phk, one);
            const float ones[2] = {g < n ? 1.0f : 0.0f, g + 8 < n ? 1.0f : 0.0f};
            noncausal::put_values<T, D, WideTile>(vb, col0, xv, ones);
            if (more) stage_v.fetch(a.v, tile_row(c0 + kChunk), row_stride, tile_rows(c0 + kChunk));
            warp16::project_group<T, D>(xq, wpt, u);
            features<Recip::approx>(u, d.beta, n, phq);
        }
        wgmma::proxy_fence();  // phi_s, vb and (step 3) sb are read by the warpgroup products
        __syncthreads();  // phi_s, vb of the chunk; sb holds S before the chunk

        // 2. o of the warp's queries, then the chunk into S.
        float num[NTW][4] = {};
        causal_forward::chunk_products<FeatureTile, WideTile>(phq, phi_s, vb, sb, group, num);
        float inv[2];
        stream::inverse_normaliser(num, inv);
        store_rows<T, D>(a.o, row0, row_stride, n, num, inv);
        if (a.inv_den && lane_id() % 4 == 0) {
            // v50: the normalisers for the causal query totals (stream_causal_totals.cuh).
            float* out = a.inv_den + bh * d.T + c0 + col0;
#pragma unroll
            for (int r = 0; r < 2; ++r)
                if (g + 8 * r < n) out[g + 8 * r] = inv[r];
        }
        state.template add<kChunk>(phi_s, vb);
        __syncthreads();  // every read of sb, phi_s, vb for this chunk is done

        // 3. S after the chunk, as bf16, for the next one.
        state.store_copy(sb);
    }
}

}  // namespace racesp::cuda
