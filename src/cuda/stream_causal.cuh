// v10 (experiments/gpu-notes.md): the causal forward on warp tiles, for the sizes of v9's kernels
// (bf16/fp16, kernel normalisation, P = L = 4, D = 64 or 128), with v34's 16-bit tensor-core
// operands (warp_tiles16.cuh, as the non-causal passes since v27). One block per (segment, head,
// batch entry) walks its segment in chunks of 128 tokens, warp w on tokens 16w .. 16w + 15:
//
//   o_i = (phi(q_i) S + sum_{j <= i in the chunk} (phi(q_i) . phi(k_j)) [v_j, 1]) normalised,
//
// with S the state before the chunk (DESIGN.md §4). Per chunk:
//   1. each warp computes its keys' features and writes them as rows (phi, the A operand of the
//      state update, read transposed by ldmatrix) and in B-fragment order (phiKB: each lane
//      stores the fragments it holds, so the intra-chunk products read them with one 8-byte
//      load), [v, 1] as rows twice: in column order (the update's B operand) and with the
//      columns where the C tiles put them (vc, column_pos: the intra-chunk products' B operand,
//      read with ldmatrix.trans, v45); it also computes its queries' features, kept in
//      registers; barrier;
//   2. each warp: num = phi(q) S (S's bf16 copy in shared memory), plus the masked products with
//      the key tiles 0..w of the chunk, normalises and stores its o rows; and the chunk is added
//      to S (registers, float32, from the segment's start state); barrier;
//   3. each warp writes its part of S, as bf16, into the copy for the next chunk, beside step 1
//      of the next chunk (no barrier between them: they touch different buffers).
// v53: both state products are Hopper's warpgroup products (wgmma.cuh): warps 0-3 and 4-7 are
// two warpgroups, each computes num for its 64 queries with S's copy as the shared-memory operand
// (4 instructions of m64n(D+8)k16 a chunk), and S lives as their accumulators, warpgroup h
// holding about half of its columns, the chunk added with 8 instructions of 128 tokens x 16.
// The state carries over in float32; only the products' operands are bf16 (fp16 inputs too: the
// state's sums overflow fp16), as in the non-causal forward.
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
    static constexpr int NTW = Base::NTW, KSD = Base::KSD, kN = Base::kW;
    // The chunk's features and [v, 1] tiles; S's bf16 copy [feature][column] is a WideTile too
    // (features at feature_pos, feature_frag's k order), so num comes out as store_rows reads it.
    using FeatureTile = typename Base::FeatureTile;
    using WideTile = typename Base::WideTile;
    std::size_t wpu, phiKB, phi, vb, sb, stage, total;
    __host__ __device__ constexpr CausalLayout() : wpu(0), phiKB(0), phi(0), vb(0), sb(0), stage(0), total(0) {
        std::size_t at = 0;
        auto take = [&](std::size_t bytes) {
            const std::size_t here = at;
            at += (bytes + 127) / 128 * 128;
            return here;
        };
        const std::size_t b16 = sizeof(__nv_bfloat16);
        wpu = take(KSD * 2 * 32 * sizeof(uint4));
        phiKB = take(kWarps * 4 * 2 * 32 * sizeof(uint2));  // per key tile: 4 k-steps x 2 n-tiles
        phi = take(kChunk * warp::kM * b16);
        vb = take(kChunk * kN * b16);
        sb = take(warp::kM * kN * b16);
        stage = take(2 * kWarps * warp::StagedRows<T, D>::kBytes);  // the next chunk's k and v (v21)
        total = at;
    }
};

namespace causal_forward {

using bf16 = __nv_bfloat16;

// acc += att [v, 1] for a 16-key block att (C tiles nt = 0, 1: keys key0 + 8 nt + 2t + e % 2):
// att as the A fragment over the 16 keys as it is, B from the wide tile with k the token
// (ldmatrix.trans: lane 8j + i addresses key key0 + i + 8 (j % 2) of n-tile nt + j / 2).
template <int D, class Tile>
__device__ __forceinline__ void times_values(const float (&att)[2][4], const bf16* vb, int key0,
                                             float (&acc)[D / 8 + 1][4]) {
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
    const std::uint32_t a[4] = {warp16::pack(att[0][0], att[0][1]), warp16::pack(att[0][2], att[0][3]),
                                warp16::pack(att[1][0], att[1][1]), warp16::pack(att[1][2], att[1][3])};
    const int row = key0 + i + 8 * (j % 2);
#pragma unroll
    for (int nt = 0; nt < D / 8; nt += 2) {
        std::uint32_t b[4];
        noncausal::ldmatrix_t(b, vb + Tile::at(row, 8 * (nt + j / 2)));
        warp16::mma(acc[nt], a, make_uint2(b[0], b[1]));
        warp16::mma(acc[nt + 1], a, make_uint2(b[2], b[3]));
    }
    std::uint32_t b[2];  // column D's n-tile (lanes 16 .. 31 repeat 0 .. 15's rows)
    noncausal::ldmatrix_t(b, vb + Tile::at(row, D));
    warp16::mma(acc[D / 8], a, make_uint2(b[0], b[1]));
}

// num = phi(q) S for the warp's 16 queries (its warpgroup's 64 together), S's bf16 copy as B
// (k over S's rows, N-major).
template <class WideTile, int NTW>
__device__ __forceinline__ void times_state(const float (&phq)[2][warp::kR], const bf16* sb, float (&num)[NTW][4]) {
    float(&flat)[4 * NTW] = *reinterpret_cast<float(*)[4 * NTW]>(&num[0][0]);
    wgmma::fence(flat);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
        std::uint32_t a[4];
        warp16::feature_frag(phq, ks, a);
        const std::uint64_t b = wgmma::descriptor(sb + WideTile::at(16 * ks, 0), WideTile::kRowGroupBytes, WideTile::kBlockBytes);
        wgmma::RegsTimesShared<8 * NTW>::template run<1>(flat, a, b);
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
    uint4* wpu = reinterpret_cast<uint4*>(sm + lay.wpu);
    uint2* phiKB = reinterpret_cast<uint2*>(sm + lay.phiKB);
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
    const float* s_start = a.s_start + bh * d.nseg * a.s_seg_stride + seg * a.s_seg_stride;

    noncausal::arrange_projection<T, D>(wpu, a.planes + blk.h * static_cast<long long>(kLP) * D);
    noncausal::zero_padding<D, WideTile, kN>(vb, kChunk);
    noncausal::StateSlice<D> state;  // S, float32, the warpgroups' accumulators
    state.load(s_start);
    state.store_copy(sb);
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
        // 1. Keys: features (phi_s, phiKB), [v, 1] (vb); then the queries' features. The next
        // chunk's keys and values are copied into the warp's slots once these have been used.
        float phq[2][kR];
        {
            Rows<T, D> xk, xv;
            Rows<T, D> xq;
            xq.load(a.q, row0, row_stride, n);
            stage_k.read(xk);
            stage_v.read(xv);
            float u[2][kP], phk[2][kR];
            warp16::project<T, D>(xk, wpu, u);
            if (more) stage_k.fetch(a.k, tile_row(c0 + kChunk), row_stride, tile_rows(c0 + kChunk));
            features<Recip::approx>(u, d.beta, n, phk);
            const float one[2] = {1.0f, 1.0f};
            noncausal::put_features<FeatureTile>(phi_s, col0, phk, one);
            // B fragment of phi(k)^T for k-step ks (table t, buckets 4ks .. 4ks + 3) and n-tile r (key g + 8r).
#pragma unroll
            for (int ks = 0; ks < 4; ++ks)
#pragma unroll
                for (int r = 0; r < 2; ++r)
                    phiKB[((warp_id * 4 + ks) * 2 + r) * 32 + lane_id()] =
                        make_uint2(warp16::pack(phk[r][4 * ks], phk[r][4 * ks + 1]),
                                   warp16::pack(phk[r][4 * ks + 2], phk[r][4 * ks + 3]));
            const float ones[2] = {g < n ? 1.0f : 0.0f, g + 8 < n ? 1.0f : 0.0f};
            noncausal::put_values<T, D, WideTile>(vb, col0, xv, ones);
            if (more) stage_v.fetch(a.v, tile_row(c0 + kChunk), row_stride, tile_rows(c0 + kChunk));
            warp16::project<T, D>(xq, wpu, u);
            features<Recip::approx>(u, d.beta, n, phq);
        }
        wgmma::proxy_fence();  // phi_s, vb and (step 3) sb are read by the warpgroup products
        __syncthreads();  // phi_s, phiKB, vb of the chunk; sb holds S before the chunk

        // 2. o of the warp's queries, then the chunk into S.
        float num[NTW][4] = {};
        causal_forward::times_state<WideTile>(phq, sb, num);
        for (int j = 0; j <= warp_id; ++j) {
            // att = phi(q) phi(k_j)^T (16 x 16, n-tile nt: keys 8nt .. 8nt + 7 of tile j), masked.
            float half[2][2][4] = {};  // over even and odd k-steps (v23)
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                std::uint32_t af[4];
                warp16::feature_frag(phq, ks, af);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) warp16::mma(half[ks % 2][nt], af, phiKB[((j * 4 + ks) * 2 + nt) * 32 + lane_id()]);
            }
            float att[2][4];
            stream::halves_sum(half, att);
            if (j == warp_id) stream::mask_diagonal(att);
            causal_forward::times_values<D, WideTile>(att, vb, kTile * j, num);  // num += att [v, 1]
        }
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
        __syncthreads();  // every read of sb, phi_s, phiKB, vb for this chunk is done

        // 3. S after the chunk, as bf16, for the next one.
        state.store_copy(sb);
    }
}

}  // namespace racesp::cuda
