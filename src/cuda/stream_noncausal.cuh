// The non-causal passes on warp tiles, for bf16/fp16 inputs, kernel normalisation, P = L = 4
// and D = 64 or 128: v9's kernels (experiments/gpu-notes.md) with v27's 16-bit tensor-core
// operands (warp_tiles16.cuh). One warp owns a tile of 16 tokens and keeps every per-token
// quantity in registers. Non-causal, every token's work depends only on the states S and U, so
// the forward and the backward's keys' side have no barrier at all; the two sums over tokens (key
// totals S = sum phi(k)^T [v, 1], query totals U = sum phi(q)^T Wm) go through shared memory once
// per 128-token chunk: each warp writes its tile's features and right-hand rows into the chunk's
// tiles (wgmma's layout), then the two warpgroups add the chunk to the state, held as their wgmma
// accumulators (float32) for the whole segment (StateSlice; v56, before it each warp's slice on
// mma.sync). The key totals are the same sums in every mode, so that pass serves causal and
// bucket runs too. The segment kernels (segment_kernel.cuh) run fp32 and other sizes. The causal
// forward (v34, stream_causal.cuh) uses this file's tiles and StateSlice too, the causal query
// totals (v35, stream_causal_totals.cuh) and backward (v38) its tiles and ldmatrix loads.
//
// Grid and outputs as the segment kernels: one block per (segment, head, batch entry), segment
// totals to seg_out, dbeta per block to dbeta_part (the backward adds the keys' part to the
// queries' part that the query totals wrote).
#pragma once

#include "stream_kernels.cuh"
#include "warp_tiles16.cuh"

namespace racesp::cuda {

// Shared memory of a non-causal kernel, in bytes from the start of the dynamic area; 0 = unused.
template <class T, int D>
struct NoncausalLayout {
    using Base = StreamLayout<T, D>;  // 8 warps, chunks of 128 tokens, n-tiles over D and D + 1
    static constexpr int kWarps = Base::kWarps, kThreads = Base::kThreads, kChunk = Base::kChunk;
    static constexpr int NTD = Base::NTD, NTW = Base::NTW;
    static constexpr int KSD = D / 16;                    // k-steps over D columns
    static constexpr int kW = Base::kW;
    using FeatureTile = typename Base::FeatureTile;  // the chunk's tiles
    using WideTile = typename Base::WideTile;
    // Two sets in the query totals (v29), so that a chunk's writes need no barrier after the
    // previous chunk's reads; one in the key totals, whose second block per multiprocessor (the
    // shared memory of two sets would not leave room for it) covers its barriers.
    static constexpr int buffers(Pass pass) { return pass == Pass::query_state ? 2 : 1; }
    static constexpr int kPhi = kChunk * warp::kM, kRows = kChunk * kW;  // elements of one set
    std::size_t red, wpu, wpd, sa, z, st, phi, rows, stage, total;

    __host__ __device__ constexpr NoncausalLayout(Pass pass)
        : red(0), wpu(0), wpd(0), sa(0), z(0), st(0), phi(0), rows(0), stage(0), total(0) {
        std::size_t at = 0;
        auto take = [&](std::size_t bytes) {
            const std::size_t here = at;
            at += (bytes + 127) / 128 * 128;
            return here;
        };
        const std::size_t frag = sizeof(uint2), b16 = sizeof(__nv_bfloat16);
        const bool grad = pass == Pass::query_state || pass == Pass::backward;
        red = take(kWarps * sizeof(double));
        wpu = take(KSD * 2 * 32 * sizeof(uint4));  // the key totals: project_group's tile, the same 8 KB (D = 128)
        if (grad) wpd = take(NTD * 32 * frag);
        if (pass == Pass::forward || pass == Pass::backward) sa = take(4 * NTW * 32 * frag);
        if (grad) z = take(warp::kM * sizeof(float));
        if (grad) st = take(KSD * 8 * 32 * frag);
        if (pass == Pass::key_state || pass == Pass::query_state) {
            phi = take(buffers(pass) * kPhi * b16);
            rows = take(buffers(pass) * kRows * b16);
        }
        // v37: the query totals' next q and dout rows, per warp (201 KB in all at D=128).
        if (pass == Pass::query_state) stage = take(2 * kWarps * warp::StagedRows<T, D>::kBytes);
        total = at;
    }
};

namespace noncausal {

using bf16 = __nv_bfloat16;

// Wp^T (planes [kLP][D], float32) as B operand of the projection, in two T parts (the value
// rounded to T, and the rest): k-step ks (columns warp16::in_col), n-tile nt (planes warp::proj_col).
template <class T, int D>
__device__ void arrange_projection(uint4* out, const float* wp) {
    for (int i = threadIdx.x; i < D / 16 * 2 * 32; i += blockDim.x) {
        const int ks = i / 64, nt = (i / 32) % 2, g = (i % 32) / 4, t = i % 4;
        const float* row = wp + warp::proj_col(nt, g) * D;
        float hi[4], lo[4];
        for (int e = 0; e < 4; ++e) {
            const float w = row[warp16::in_col(ks, t, e)];
            hi[e] = warp16::round_to<T>(w);
            lo[e] = w - hi[e];
        }
        out[i] = make_uint4(warp16::pack<T>(hi[0], hi[1]), warp16::pack<T>(hi[2], hi[3]), warp16::pack<T>(lo[0], lo[1]),
                            warp16::pack<T>(lo[2], lo[3]));
    }
}
// v74: Wp as project_group's B operand, wgmma::Blocked<D> of 32 rows: row n is C's column n,
// n-tile 2 part + nt (part 0 the planes rounded to T, 1 the rest, as arrange_projection), column
// c of n-tile nt plane proj_col(nt, c); column 16 ks + kk is k-step ks's k kk, at the row's
// column in_col(ks, t, e) with kk = 2 t + e % 2 + 8 (e / 2) (rows_frag's order).
template <class T, int D>
__device__ void arrange_projection_tile(std::uint32_t* out, const float* wp) {
    using Tile = wgmma::Blocked<D>;
    for (int i = threadIdx.x; i < 32 * D / 2; i += blockDim.x) {
        const int n = i / (D / 2), kl = 2 * (i % (D / 2));
        const float* row = wp + warp::proj_col(n / 8 % 2, n % 8) * D;
        float v[2];
        for (int h = 0; h < 2; ++h) {
            const int ks = (kl + h) / 16, kk = (kl + h) % 16;
            const float w = row[warp16::in_col(ks, kk % 8 / 2, kk % 2 + 2 * (kk / 8))];
            const float hi = warp16::round_to<T>(w);
            v[h] = n < 16 ? hi : w - hi;
        }
        out[Tile::at(n, kl) / 2] = warp16::pack<T>(v[0], v[1]);
    }
}
// Wp as B operand of dz Wp: k over table t's planes 0..3, n-tile nt (columns out_col).
template <int D>
__device__ void arrange_planes_out(uint2* out, const float* wp) {
    for (int i = threadIdx.x; i < D / 8 * 32; i += blockDim.x) {
        const int nt = i / 32, g = (i % 32) / 4, t = i % 4;
        auto at = [&](int p) { return wp[(4 * t + p) * D + warp::out_col<D>(nt, g)]; };
        out[i] = make_uint2(warp16::pack(at(0), at(1)), warp16::pack(at(2), at(3)));
    }
}
// A state X (M x (D + 1), float32) as B operand with k over features: phi X (n-tile nt: columns
// out_col; k-step ks: table t, buckets 4ks .. 4ks + 3).
template <int D>
__device__ void arrange_state(uint2* out, const float* x) {
    constexpr int W = D + 1, NTW = D / 8 + 1;
    for (int i = threadIdx.x; i < 4 * NTW * 32; i += blockDim.x) {
        const int ks = i / (NTW * 32), nt = (i / 32) % NTW, g = (i % 32) / 4, t = i % 4;
        const int col = warp::out_col<D>(nt, g), f = warp::kR * t + 4 * ks;
        auto at = [&](int e) { return col < W ? __ldg(x + (f + e) * W + col) : 0.0f; };
        out[i] = make_uint2(warp16::pack(at(0), at(1)), warp16::pack(at(2), at(3)));
    }
}
// The same state's first D columns as B operand with k over them: R X[:, :D]^T for R over D
// columns (k-step ks: columns warp16::in_col; n-tile nt: features, column n = g is table g / 2,
// bucket 2nt + g % 2, as stream::dphi_of reads them). Column D, the normaliser's, stays float32
// (stream::load_key_sums): the gradients take a difference of its products and the others'.
template <int D>
__device__ void arrange_state_t(uint2* out, const float* x) {
    constexpr int W = D + 1;
    for (int i = threadIdx.x; i < D / 16 * 8 * 32; i += blockDim.x) {
        const int ks = i / 256, nt = (i / 32) % 8, g = (i % 32) / 4, t = i % 4;
        const float* row = x + (warp::kR * (g / 2) + 2 * nt + g % 2) * W;
        auto at = [&](int e) { return __ldg(row + warp16::in_col(ks, t, e)); };
        out[i] = make_uint2(warp16::pack(at(0), at(1)), warp16::pack(at(2), at(3)));
    }
}

// phi . z for the lane's two rows (z in shared memory, one float per feature), summed over the
// four lanes of the row's tables.
__device__ __forceinline__ void feature_dot(const float (&phi)[2][warp::kR], const float* z, float (&out)[2]) {
    const int t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float s = 0.0f;
#pragma unroll
        for (int b = 0; b < warp::kR; ++b) s += phi[r][b] * z[warp::kR * t + b];
        out[r] = warp::sum_over_t(s);
    }
}
// The same with a per-row vector x (x[r][b]: row r, table t's bucket b, as phi).
__device__ __forceinline__ void feature_dot(const float (&phi)[2][warp::kR], const float (&x)[2][warp::kR],
                                            float (&out)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float s = 0.0f;
#pragma unroll
        for (int b = 0; b < warp::kR; ++b) s += phi[r][b] * x[r][b];
        out[r] = warp::sum_over_t(s);
    }
}

// acc[nt] += phi X for all n-tiles, X arranged by arrange_state.
template <int NT, int NTW>
__device__ __forceinline__ void times_state(const float (&phi)[2][warp::kR], const uint2* sa, float (&acc)[NT][4]) {
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
        std::uint32_t a[4];
        warp16::feature_frag(phi, ks, a);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) warp16::mma(acc[nt], a, sa[(ks * NTW + nt) * 32 + warp::lane_id()]);
    }
}

// dph[r][b] = R X[:, :D]^T, R's A fragments over D columns given per k-step by `frag(ks, a)`,
// X arranged by arrange_state_t.
template <int D, class Frag>
__device__ __forceinline__ void times_state_t(Frag frag, const uint2* st, float (&dph)[2][warp::kR]) {
    float acc[8][4] = {};
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        std::uint32_t a[4];
        frag(ks, a);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) warp16::mma(acc[nt], a, st[(ks * 8 + nt) * 32 + warp::lane_id()]);
    }
    stream::dphi_of(acc, dph);
}

// Column c = 32 a + 8 t + 2 m + i (< D) sits where the C tiles over columns put them: n-tile 4a + m,
// column 2t + i (warp::out_col), which is also the k order of warp16::rows_frag. A tile stored
// with its columns there gives, read with ldmatrix (.trans where k is the token), B fragments
// whose products come out in out_col's order (v38's causal backward, v45's causal forward).
__host__ __device__ constexpr int column_pos(int c) { return (c & ~31) | ((c & 6) << 2) | ((c >> 2) & 6) | (c & 1); }

// Feature f = 16 t + b (table t, bucket b) sits where the C tiles over features put it: n-tile
// b / 2, column 2t + b % 2 (stream::dphi_of), which is also the k order of warp16::feature_frag
// (k-step ks, k = 8 (e / 2) + 2t + e % 2 for bucket 4 ks + e). feature_at is its inverse.
__host__ __device__ constexpr int feature_pos(int f) { return 8 * (f % 16 / 2) + 2 * (f / 16) + f % 2; }
__host__ __device__ constexpr int feature_at(int p) { return warp::kR * (p % 8 / 2) + 2 * (p / 8) + p % 2; }

// The lane's features of its two rows, each row times scale[r], into a feature tile
// (wgmma::Blocked, features at feature_pos); col0 is the tile's first token in the chunk.
template <class Tile>
__device__ __forceinline__ void put_features(bf16* tile, int col0, const float (&phi)[2][warp::kR], const float (&scale)[2]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
            *reinterpret_cast<std::uint32_t*>(tile + Tile::at(col0 + g + 8 * r, 8 * nt + 2 * t)) =
                warp16::pack(phi[r][2 * nt] * scale[r], phi[r][2 * nt + 1] * scale[r]);
}

// A tile's right-hand sides ([v, 1] or [G, c]: the rows, then one value per row) into a wide tile
// (wgmma::Blocked): the rows' columns at column_pos, the value in columns D, D + 1 as two bf16
// parts (the value rounded, and what that leaves), so that column D of a sum keeps ~16 bits.
template <class T, int D, class Tile>
__device__ __forceinline__ void put_values(bf16* tile, int col0, const warp::Rows<T, D>& x, const float (&value)[2]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = col0 + g + 8 * r;
#pragma unroll
        for (int s = 0; s < D / 32; ++s)
#pragma unroll
            for (int m = 0; m < 4; ++m)
                *reinterpret_cast<std::uint32_t*>(tile + Tile::at(row, 32 * s + 8 * m + 2 * t)) =
                    warp16::as_bf16<T>(warp16::word(x.x[r][s], m));
        if (t == 0) {
            const float hi = __bfloat162float(__float2bfloat16(value[r]));
            *reinterpret_cast<std::uint32_t*>(tile + Tile::at(row, D)) = warp16::pack(hi, value[r] - hi);
        }
    }
}
// Columns D + 2 .. kW - 1 of a wide tile of `tokens` rows, which put_values never writes: zeroed once.
template <int D, class Tile, int kW>
__device__ void zero_padding(bf16* tile, int tokens) {
    constexpr int kPad = kW - D - 2;
    for (int i = threadIdx.x; i < tokens * kPad; i += blockDim.x) tile[Tile::at(i / kPad, D + 2 + i % kPad)] = __float2bfloat16(0.0f);
}

// ldmatrix with .trans: the 8 x 8 16-bit blocks whose rows (16 bytes each) lanes 8j .. 8j + 7
// address, transposed into register j: lane (g, t) gets rows 2t, 2t + 1 of column g, i.e. the
// fragment of an operand whose k runs along the rows (PTX ISA, "ldmatrix").
__device__ __forceinline__ void ldmatrix_t(std::uint32_t (&r)[4], const bf16* p) {
    const auto at = static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at)
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_t(std::uint32_t (&r)[2], const bf16* p) {
    const auto at = static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(at)
                 : "memory");
}

// ldmatrix without .trans: register j gets row g, columns 2t, 2t + 1 of block j, i.e. the
// fragment of an operand whose k runs along the rows' 16 bytes (v38, the causal backward).
__device__ __forceinline__ void ldmatrix(std::uint32_t (&r)[4], const bf16* p) {
    const auto at = static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at)
                 : "memory");
}

// A state (M x (D + 1)) summed over tokens, float32, as the two warpgroups' wgmma accumulators
// (v53: v10's state; v56: the key and query totals' sums too): warpgroup h holds the n-tiles
// [h kTiles, (h + 1) kTiles) of the wide tiles' columns, warp w the rows 16 (w % 4) .. + 15
// (features at feature_pos), element e of its n-tile i at row g + 8 (e / 2), column
// 8 i + 2t + e % 2. The n-tiles past column D's stay zero (so are the tiles there).
template <int D>
struct StateSlice {
    static constexpr int NTW = D / 8 + 1, kTiles = (NTW + 1) / 2;
    using FeatureTile = wgmma::Blocked<warp::kM>;
    using WideTile = wgmma::Blocked<16 * kTiles>;
    float d[4 * kTiles] = {};

    __device__ static int first() { return threadIdx.x / 128 * kTiles; }

    // f(m, col, e, i) for each element: m the feature, col the state's column (D + 1: none, in
    // column D's second part and the padding).
    template <class F>
    __device__ __forceinline__ static void each(F f) {
        const int g = warp::lane_id() / 4, t = warp::lane_id() % 4, p0 = 16 * (threadIdx.x / 32 % 4);
#pragma unroll
        for (int i = 0; i < kTiles; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int nt = first() + i;
                const int col = nt < NTW ? warp::out_col<D>(nt, 2 * t + e % 2) : D + 1;  // D + j in column D's n-tile
                f(feature_at(p0 + g + 8 * (e / 2)), col <= D ? col : D + 1, e, i);
            }
    }
    // phi^T rows over a chunk of kChunk tokens: kChunk / 16 k-steps, both tiles MN-major (their
    // contiguous dimension is M, the features, and N, the columns).
    template <int kChunk>
    __device__ __forceinline__ void add(const bf16* phi, const bf16* rows) {
        wgmma::fence(d);
#pragma unroll
        for (int kk = 0; kk < kChunk / 16; ++kk) {
            const std::uint64_t a =
                wgmma::descriptor(phi + FeatureTile::at(16 * kk, 0), FeatureTile::kRowGroupBytes, FeatureTile::kBlockBytes);
            const std::uint64_t b = wgmma::descriptor(rows + WideTile::at(16 * kk, 8 * first()), WideTile::kRowGroupBytes,
                                                      WideTile::kBlockBytes);
            wgmma::SharedTimesShared<8 * kTiles>::template run<1, 1>(d, a, b);
        }
        wgmma::commit_and_wait(d);
    }
    // The sum into a float32 state (M x (D + 1)); column D is the sum of its two parts.
    __device__ __forceinline__ void store(float* out) const {
        each([&](int f, int col, int e, int i) {
            if (col < D) out[f * (D + 1) + col] = d[4 * i + e];
            else if (col == D && e % 2 == 0) out[f * (D + 1) + D] = d[4 * i + e] + d[4 * i + e + 1];
        });
    }
    // The causal forward's start (v34): a state x (M x (D + 1)), column D into its first part.
    __device__ __forceinline__ void load(const float* x) {
        each([&](int f, int col, int e, int i) { d[4 * i + e] = col <= D ? __ldg(x + f * (D + 1) + col) : 0.0f; });
    }
    // The sum rounded to bf16 into a copy [feature][column] (wgmma::Blocked of the wide tiles'
    // width, features at feature_pos, columns at column_pos): column D the sum of its two parts,
    // the columns after it zero (the causal forward's B operand of phi(q) S).
    __device__ __forceinline__ void store_copy(bf16* copy) const {
        const int g = warp::lane_id() / 4, t = warp::lane_id() % 4, p0 = 16 * (threadIdx.x / 32 % 4);
#pragma unroll
        for (int i = 0; i < kTiles; ++i) {
            const int nt = first() + i;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float lo = d[4 * i + 2 * h], hi = d[4 * i + 2 * h + 1];
                if (nt >= NTW - 1) {  // column D's n-tile and the zeros after it
                    lo = nt == NTW - 1 && t == 0 ? lo + hi : 0.0f;
                    hi = 0.0f;
                }
                *reinterpret_cast<std::uint32_t*>(copy + WideTile::at(p0 + g + 8 * h, 8 * nt + 2 * t)) = warp16::pack(lo, hi);
            }
        }
    }
};

}  // namespace noncausal

// Two blocks per multiprocessor (at most 128 registers a thread) but for the query totals,
// whose per-token work needs more.
template <Pass pass>
constexpr int noncausal_min_blocks() { return pass == Pass::query_state ? 1 : 2; }

template <class T, int D, Pass pass>
__global__ void __launch_bounds__(NoncausalLayout<T, D>::kThreads, noncausal_min_blocks<pass>())
    noncausal_kernel(const SegmentArgs<T> a) {
    using Lay = NoncausalLayout<T, D>;
    using namespace warp;
    using noncausal::bf16;
    constexpr Lay lay(pass);
    constexpr int NTD = Lay::NTD, NTW = Lay::NTW, kChunk = Lay::kChunk;
    using FeatureTile = typename Lay::FeatureTile;
    using WideTile = typename Lay::WideTile;
    extern __shared__ __align__(128) unsigned char sm[];
    double* red = reinterpret_cast<double*>(sm + lay.red);
    uint4* wpu = reinterpret_cast<uint4*>(sm + lay.wpu);
    uint2* wpd = reinterpret_cast<uint2*>(sm + lay.wpd);
    uint2* sa = reinterpret_cast<uint2*>(sm + lay.sa);
    uint2* st = reinterpret_cast<uint2*>(sm + lay.st);
    bf16* phi_s = reinterpret_cast<bf16*>(sm + lay.phi);
    bf16* rows_s = reinterpret_cast<bf16*>(sm + lay.rows);
    float* col_d = reinterpret_cast<float*>(sm + lay.z);  // column D of the state read (S or U)

    const Dims& d = a.d;
    const stream::SegmentBlock<D> blk(d);
    const int seg = blk.seg, seg_begin = blk.begin, seg_end = blk.end;
    const long long row_stride = blk.row_stride, bh = blk.bh;
    const int warp_id = threadIdx.x / 32;
    const long long state_size = static_cast<long long>(kM) * (D + 1);
    const float* wp = a.planes + blk.h * static_cast<long long>(kLP) * D;

    // v74: the key totals project on wgmma (their warpgroups walk the chunks together), the other
    // passes on mma.sync.
    if constexpr (pass == Pass::key_state) noncausal::arrange_projection_tile<T, D>(reinterpret_cast<std::uint32_t*>(wpu), wp);
    else noncausal::arrange_projection<T, D>(wpu, wp);
    if constexpr (pass == Pass::query_state || pass == Pass::backward) noncausal::arrange_planes_out<D>(wpd, wp);
    if constexpr (pass == Pass::forward) noncausal::arrange_state<D>(sa, a.s_start + bh * state_size);
    if constexpr (pass == Pass::query_state) {
        stream::load_key_sums<D>(col_d, a.s_start + bh * state_size);
        noncausal::arrange_state_t<D>(st, a.s_start + bh * state_size);
    }
    if constexpr (pass == Pass::backward) {
        noncausal::arrange_state<D>(sa, a.u_start + bh * state_size);
        stream::load_key_sums<D>(col_d, a.u_start + bh * state_size);
        noncausal::arrange_state_t<D>(st, a.u_start + bh * state_size);
    }
    if constexpr (pass == Pass::key_state || pass == Pass::query_state)
        noncausal::zero_padding<D, WideTile, Lay::kW>(rows_s, Lay::buffers(pass) * kChunk);
    if constexpr (pass == Pass::key_state) wgmma::proxy_fence();  // the projection's planes are read by wgmma
    __syncthreads();
    double dbeta = 0.0;

    if constexpr (pass == Pass::forward || pass == Pass::backward) {
        // One tile per warp at a time, no barrier.
        for (int t0 = seg_begin + kTile * warp_id; t0 < seg_end; t0 += kTile * Lay::kWarps) {
            const int n = min(kTile, seg_end - t0);
            const long long row0 = blk.row_of(t0);
            float u[2][kP], phi[2][kR];
            if constexpr (pass == Pass::forward) {
                Rows<T, D> xq;
                xq.load(a.q, row0, row_stride, n);
                warp16::project<T, D>(xq, wpu, u);
                features<Recip::approx>(u, d.beta, n, phi);
                float num[NTW][4] = {};
                noncausal::times_state<NTW, NTW>(phi, sa, num);
                // o = num[:, :D] / num[:, D].
                float inv[2];
                stream::inverse_normaliser(num, inv);
                store_rows<T, D>(a.o, row0, row_stride, n, num, inv);
            } else {
                // Keys' side (v8's split: dq came from the query totals pass).
                Rows<T, D> xk, xv;
                xk.load(a.k, row0, row_stride, n);
                xv.load(a.v, row0, row_stride, n);
                warp16::project<T, D>(xk, wpu, u);
                features(u, d.beta, n, phi);
                // dL/dphi(k) = [v, 1] U^T: U's column D in float32 (it and v U[:, :D]^T nearly cancel).
                float dph[2][kR];
                noncausal::times_state_t<D>(
                    [&](int ks, std::uint32_t(&af)[4]) { warp16::rows_frag_bf16<T, D>(xv, ks, af); }, st, dph);
                // (Rows at or beyond n get U[:, D] too; their zero features cancel it.)
                const int t = lane_id() % 4;
#pragma unroll
                for (int b = 0; b < kR; ++b) {
                    const float ud = col_d[kR * t + b];
                    dph[0][b] += ud;
                    dph[1][b] += ud;
                }
                // dL/dz first: dL/dphi(k) is then dead while dv's accumulators live.
                float dz[2][kP];
                dbeta += features_backward(u, phi, dph, d.beta, dz);
                const float one[2] = {1.0f, 1.0f};
                {
                    // dv = phi(k) U[:, :D].
                    float dv[NTD][4] = {};
                    noncausal::times_state<NTD, NTW>(phi, sa, dv);
                    store_rows<T, D>(a.dv, row0, row_stride, n, dv, one);
                }
                float dk[NTD][4];
                warp16::planes_out<D>(dz, wpd, dk);
                store_rows<T, D>(a.dk, row0, row_stride, n, dk, one);
            }
        }
    } else {
        // The sums over tokens: chunks of kChunk tokens, warp w on tokens 16w .. 16w + 15.
        noncausal::StateSlice<D> slice;
        // The warp's tile of the chunk at c0: its first row (clamped into the segment) and rows.
        auto tile_row = [&](int c0) { return blk.row_of(min(c0 + kTile * warp_id, seg_end - 1)); };
        auto tile_rows = [&](int c0) { return max(0, min(kTile, seg_end - c0 - kTile * warp_id)); };
        // v37: the query totals copy the next chunk's q and dout rows into the warp's slots
        // (cp.async) while they work on this one (v21's StagedRows, as v10).
        constexpr int kSlot = StagedRows<T, D>::kBytes / 16;
        const StagedRows<T, D> stage_q{reinterpret_cast<uint4*>(sm + lay.stage) + warp_id * kSlot};
        const StagedRows<T, D> stage_g{stage_q.slot + Lay::kWarps * kSlot};
        if constexpr (pass == Pass::query_state) {
            stage_q.fetch(a.q, tile_row(seg_begin), row_stride, tile_rows(seg_begin));
            stage_g.fetch(a.dout, tile_row(seg_begin), row_stride, tile_rows(seg_begin));
        }
        for (int c0 = seg_begin; c0 < seg_end; c0 += kChunk) {
            const int n = tile_rows(c0);
            const long long row0 = tile_row(c0);
            const int col0 = kTile * warp_id;  // the warp's first token in the chunk
            const int set = ((c0 - seg_begin) / kChunk) % Lay::buffers(pass);
            bf16* phi_c = phi_s + set * Lay::kPhi;
            bf16* rows_c = rows_s + set * Lay::kRows;
            float u[2][kP], phi[2][kR];
            float scale[2] = {1.0f, 1.0f};  // of the features in phi^T
            if constexpr (pass == Pass::key_state) {
                Rows<T, D> xk, xv;
                xk.load(a.k, row0, row_stride, n);
                xv.load(a.v, row0, row_stride, n);
                warp16::project_group<T, D>(xk, wpu, u);
                features<Recip::approx>(u, d.beta, n, phi);
                const int g = lane_id() / 4;
                const float ones[2] = {g < n ? 1.0f : 0.0f, g + 8 < n ? 1.0f : 0.0f};
                noncausal::put_values<T, D, WideTile>(rows_c, col0, xv, ones);
            } else {
                // Query totals with v8's split: also dq and the queries' part of dbeta, from the
                // normaliser den = phi(q) . z and Wm = [dout, -(dout . o)] / den. v27: dout's rows
                // are exact bf16 operands and 1 / den scales the features instead, so that the two
                // parts of Wm, which nearly cancel in the products, are rounded alike.
                const bool more = c0 + kChunk < seg_end;
                Rows<T, D> xq, xg;
                stage_q.read(xq);
                stage_g.read(xg);
                warp16::project<T, D>(xq, wpu, u);
                if (more) stage_q.fetch(a.q, tile_row(c0 + kChunk), row_stride, tile_rows(c0 + kChunk));
                features<Recip::approx>(u, d.beta, n, phi);
                float den[2];
                noncausal::feature_dot(phi, col_d, den);
                const int g = lane_id() / 4, t = lane_id() % 4;
#pragma unroll
                for (int r = 0; r < 2; ++r) scale[r] = g + 8 * r < n ? 1.0f / den[r] : 0.0f;
                // dL/dphi(q) = (dout S[:, :D]^T - (dout . o) z^T) / den, z = S[:, D] in float32.
                float dph[2][kR];
                noncausal::times_state_t<D>(
                    [&](int ks, std::uint32_t(&af)[4]) { warp16::rows_frag_bf16<T, D>(xg, ks, af); }, st, dph);
                // v32: dout . o = (phi . dout S[:, :D]^T) / den, not read from o: the forward's o
                // before its output rounding, and phi . dL/dphi(q) is then 0 as the exact one is.
                float go[2];
                noncausal::feature_dot(phi, dph, go);
#pragma unroll
                for (int r = 0; r < 2; ++r) go[r] = -go[r] * scale[r];
#pragma unroll
                for (int b = 0; b < kR; ++b) {
                    const float z = col_d[kR * t + b];
#pragma unroll
                    for (int r = 0; r < 2; ++r) dph[r][b] = (dph[r][b] + go[r] * z) * scale[r];
                }
                // [dout, -(dout . o)] into the chunk's rows for U += (phi(q) / den)^T [dout, -(dout . o)].
                noncausal::put_values<T, D, WideTile>(rows_c, col0, xg, go);
                if (more) stage_g.fetch(a.dout, tile_row(c0 + kChunk), row_stride, tile_rows(c0 + kChunk));
                float dz[2][kP];
                dbeta += features_backward(u, phi, dph, d.beta, dz);
                float dq[NTD][4];
                warp16::planes_out<D>(dz, wpd, dq);
                const float one[2] = {1.0f, 1.0f};
                if (n > 0) store_rows<T, D>(a.dq, row0, row_stride, n, dq, one);
            }
            noncausal::put_features<FeatureTile>(phi_c, col0, phi, scale);
            wgmma::proxy_fence();  // the tiles are read by wgmma
            __syncthreads();  // the chunk's features and right-hand rows
            slice.template add<kChunk>(phi_c, rows_c);
            // With one set, read before the next chunk overwrites it. With two, the chunk after
            // next writes this set only once every warp has passed the next chunk's barrier.
            if constexpr (Lay::buffers(pass) == 1) __syncthreads();
        }
        slice.store(a.seg_out + (bh * d.nseg + seg) * state_size);
    }

    if constexpr (pass == Pass::query_state || pass == Pass::backward) {
        const double s = warp::block_sum(dbeta, red, Lay::kWarps);
        if (threadIdx.x == 0) {
            double* part = a.dbeta_part + bh * d.nseg + seg;
            *part = (pass == Pass::backward ? *part : 0.0) + s;
        }
    }
}

}  // namespace racesp::cuda
