// v10 (experiments/gpu-notes.md): the causal forward on warp tiles, for the sizes of v9's kernels
// (bf16/fp16, kernel normalisation, P = L = 4, D = 64 or 128). One block per (segment, head,
// batch entry) walks its segment in chunks of 128 tokens, warp w on tokens 16w .. 16w + 15:
//
//   o_i = (phi(q_i) S + sum_{j <= i in the chunk} (phi(q_i) . phi(k_j)) [v_j, 1]) normalised,
//
// with S the state before the chunk (DESIGN.md §4). Per chunk:
//   1. each warp computes its keys' features and writes them transposed (phiT, the A operand of
//      the state update) and in B-fragment order (phiKB: each lane stores the fragments it holds,
//      so the intra-chunk products read them with one 8-byte load), with [v, 1]^T (vT); it also
//      computes its queries' features, kept in registers; barrier;
//   2. each warp: num = phi(q) S (S arranged in shared memory as in v9), plus the masked
//      products with the key tiles 0..w of the chunk, normalises and stores its o rows; and
//      adds the whole chunk to its slice of S (registers, float32, from the segment's start
//      state); barrier;
//   3. each warp writes its slice back into the arranged S (TF32) for the next chunk, beside
//      step 1 of the next chunk (no barrier between them: they touch different buffers).
//
// (v11 ran the causal query totals on this sweep, recomputing o; v14 reads the forward's o
// instead: stream_causal_totals.cuh.)
#pragma once

#include "stream_kernels.cuh"

namespace racesp::cuda {

template <class T, int D>
struct CausalLayout {
    using Base = StreamLayout<T, D>;
    static constexpr int kWarps = Base::kWarps, kThreads = Base::kThreads, kChunk = Base::kChunk;
    static constexpr int NTW = Base::NTW;
    std::size_t wpu, sa, phiT, phiKB, vT, stage, total;
    __host__ __device__ constexpr CausalLayout() : wpu(0), sa(0), phiT(0), phiKB(0), vT(0), stage(0), total(0) {
        std::size_t at = 0;
        auto take = [&](std::size_t bytes) {
            const std::size_t here = at;
            at += (bytes + 127) / 128 * 128;
            return here;
        };
        wpu = take(D / 8 * 2 * 32 * sizeof(float2));
        sa = take(8 * NTW * 32 * sizeof(float2));
        phiT = take(warp::kM * Base::ldT * sizeof(float));
        phiKB = take(kWarps * 8 * 2 * 32 * sizeof(float2));  // per key tile: 8 k-steps x 2 n-tiles
        vT = take(NTW * 8 * Base::ldV * sizeof(T));
        stage = take(2 * kWarps * warp::StagedRows<T, D>::kBytes);  // the next chunk's k and v (v21), 209 KB in all at D=128
        total = at;
    }
};

template <class T, int D>
__global__ void __launch_bounds__(CausalLayout<T, D>::kThreads, 1) causal_sweep_kernel(const SegmentArgs<T> a) {
    using Lay = CausalLayout<T, D>;
    using namespace warp;
    constexpr Lay lay;
    constexpr int NTD = D / 8, NTW = NTD + 1, kChunk = Lay::kChunk;
    constexpr int ldT = Lay::Base::ldT, ldV = Lay::Base::ldV;
    extern __shared__ __align__(128) unsigned char sm[];
    float2* wpu = reinterpret_cast<float2*>(sm + lay.wpu);
    float2* sa = reinterpret_cast<float2*>(sm + lay.sa);
    float* phiT = reinterpret_cast<float*>(sm + lay.phiT);
    float2* phiKB = reinterpret_cast<float2*>(sm + lay.phiKB);
    T* vT = reinterpret_cast<T*>(sm + lay.vT);
    constexpr int kSlot = StagedRows<T, D>::kBytes / 16;
    const StagedRows<T, D> stage_k{reinterpret_cast<uint4*>(sm + lay.stage) + (threadIdx.x / 32) * kSlot};
    const StagedRows<T, D> stage_v{stage_k.slot + Lay::kWarps * kSlot};

    const Dims& d = a.d;
    const stream::SegmentBlock<D> blk(d);
    const int seg = blk.seg, seg_begin = blk.begin, seg_end = blk.end;
    const long long row_stride = blk.row_stride, bh = blk.bh;
    const int warp_id = threadIdx.x / 32, g = lane_id() / 4, t = lane_id() % 4;
    const float* s_start = a.s_start + bh * d.nseg * a.s_seg_stride + seg * a.s_seg_stride;

    stream::arrange_projection<D>(wpu, a.planes + blk.h * static_cast<long long>(kLP) * D);
    stream::arrange_state<D>(sa, s_start);
    for (int i = threadIdx.x; i < NTW * 8 * ldV; i += blockDim.x) vT[i] = from_float<T>(0.0f);  // columns D+1.. stay 0
    stream::StateSlice<T, D> slice;
    slice.load(s_start);
    // The warp's tile of the chunk at c0: its first row (clamped into the segment) and rows.
    auto tile_row = [&](int c0) { return blk.row_of(min(c0 + kTile * warp_id, seg_end - 1)); };
    auto tile_rows = [&](int c0) { return max(0, min(kTile, seg_end - c0 - kTile * warp_id)); };
    stage_k.fetch(a.k, tile_row(seg_begin), row_stride, tile_rows(seg_begin));
    stage_v.fetch(a.v, tile_row(seg_begin), row_stride, tile_rows(seg_begin));
    __syncthreads();

    for (int c0 = seg_begin; c0 < seg_end; c0 += kChunk) {
        const int n = tile_rows(c0);
        const long long row0 = tile_row(c0);
        const bool more = c0 + kChunk < seg_end;
        const int col0 = kTile * warp_id;
        // 1. Keys: features (phiT, phiKB) and [v, 1]^T; then the queries' features. The next
        // chunk's keys and values are copied into the warp's slots once these have been used.
        float phq[2][kR];
        {
            Rows<T, D> xk, xv;
            Rows<T, D> xq;
            xq.load(a.q, row0, row_stride, n);
            stage_k.read(xk);
            stage_v.read(xv);
            float u[2][kP], phk[2][kR];
            project<T, D>(xk, wpu, u);
            if (more) stage_k.fetch(a.k, tile_row(c0 + kChunk), row_stride, tile_rows(c0 + kChunk));
            features(u, d.beta, n, phk);
            stream::put_features_t<ldT>(phiT, col0, phk);
            // B fragment of phi(k)^T for k-step ks (features 16t + 2ks, +1) and n-tile r (key g + 8r).
#pragma unroll
            for (int ks = 0; ks < 8; ++ks)
#pragma unroll
                for (int r = 0; r < 2; ++r)
                    phiKB[((warp_id * 8 + ks) * 2 + r) * 32 + lane_id()] =
                        make_float2(tf32f(phk[r][2 * ks]), tf32f(phk[r][2 * ks + 1]));
            stream::put_values_t<T, D, ldV>(vT, col0, xv, n);
            if (more) stage_v.fetch(a.v, tile_row(c0 + kChunk), row_stride, tile_rows(c0 + kChunk));
            project<T, D>(xq, wpu, u);
            features(u, d.beta, n, phq);
        }
        __syncthreads();  // phiT, phiKB, vT of the chunk; sa holds S before the chunk

        // 2. o of the warp's queries, then the chunk into the slice of S.
        float num[NTW][4] = {};
        stream::times_state<NTW, NTW>(phq, sa, num);
        for (int j = 0; j <= warp_id; ++j) {
            // att = phi(q) phi(k_j)^T (16 x 16, n-tile nt: keys 8nt .. 8nt + 7 of tile j), masked.
            float half[2][2][4] = {};  // over even and odd k-steps (v23)
#pragma unroll
            for (int ks = 0; ks < 8; ++ks) {
                std::uint32_t af[4];
                feature_frag(phq, ks, af);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) mma(half[ks % 2][nt], af, phiKB[((j * 8 + ks) * 2 + nt) * 32 + lane_id()]);
            }
            float att[2][4];
            stream::halves_sum(half, att);
            if (j == warp_id) stream::mask_diagonal(att);
            stream::times_values<T, D, ldV>(att, vT, kTile * j, num);  // num += att [v, 1]
        }
        float inv[2];
        stream::inverse_normaliser(num, inv);
        store_rows<T, D>(a.o, row0, row_stride, n, num, inv);
        slice.template add<ldT, ldV, kChunk>(phiT, vT);
        __syncthreads();  // every read of sa, phiT, phiKB, vT for this chunk is done

        // 3. S after the chunk, arranged for the next one.
        slice.store_arranged(sa);
    }
}

}  // namespace racesp::cuda
