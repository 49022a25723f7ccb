// The non-causal passes on warp tiles, for bf16/fp16 inputs, kernel normalisation, P = L = 4
// and D = 64 or 128: v9's kernels (experiments/gpu-notes.md) with v27's 16-bit tensor-core
// operands (warp_tiles16.cuh). One warp owns a tile of 16 tokens and keeps every per-token
// quantity in registers. Non-causal, every token's work depends only on the states S and U, so
// the forward and the backward's keys' side have no barrier at all; the two sums over tokens (key
// totals S = sum phi(k)^T [v, 1], query totals U = sum phi(q)^T Wm) go through shared memory once
// per 128-token chunk: each warp writes its tile's features and right-hand rows (16-byte pieces,
// as its registers hold them), then each warp adds the chunk to its own slice of the state, held
// in registers (float32) for the whole segment, reading the tiles transposed (ldmatrix.trans).
// The key totals are the same sums in every mode, so that pass serves causal and bucket runs
// too. The segment kernels (segment_kernel.cuh) run fp32 and other sizes. The causal forward
// (v34, stream_causal.cuh) and query totals (v35, stream_causal_totals.cuh) use this file's
// tiles and StateSlice too; the causal backward (v38) its ldmatrix loads.
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
    // The chunk's tiles (v30): features and right-hand rows [token][column], bf16, rows of an odd
    // number of 16-byte pieces so that ldmatrix's 8 rows hit different banks: 72 features (64
    // used), D + 8 columns (D + 2 used: the rows, and column D in two parts).
    static constexpr int ldp = warp::kM + 8, ldv = D + 8;
    // Two sets in the query totals (v29), so that a chunk's writes need no barrier after the
    // previous chunk's reads; one in the key totals, whose second block per multiprocessor (the
    // shared memory of two sets would not leave room for it) covers its barriers.
    static constexpr int buffers(Pass pass) { return pass == Pass::query_state ? 2 : 1; }
    static constexpr int kPhi = kChunk * ldp, kRows = kChunk * ldv;  // elements of one set
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
        wpu = take(KSD * 2 * 32 * sizeof(uint4));
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

// The tile's features, each row times scale[r], into phi ([token][feature], ldp elements); col0
// is the tile's first token in the chunk. Lane t's 16 features (table t) are two 16-byte pieces.
template <int ldp>
__device__ __forceinline__ void put_features(bf16* phi_s, int col0, const float (&phi)[2][warp::kR],
                                             const float (&scale)[2]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            std::uint32_t w[4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
                w[i] = warp16::pack(phi[r][8 * h + 2 * i] * scale[r], phi[r][8 * h + 2 * i + 1] * scale[r]);
            *reinterpret_cast<uint4*>(phi_s + (col0 + g + 8 * r) * ldp + warp::kR * t + 8 * h) =
                make_uint4(w[0], w[1], w[2], w[3]);
        }
}

// The tile's rows, as bf16, into columns 0 .. D - 1 of rows ([token][column], ldv elements):
// each lane's row-layout vectors as they are.
template <class T, int D, int ldv>
__device__ __forceinline__ void put_rows(bf16* rows, int col0, const warp::Rows<T, D>& x) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int s = 0; s < D / 32; ++s) {
            const uint4 v = x.x[r][s];
            *reinterpret_cast<uint4*>(rows + (col0 + g + 8 * r) * ldv + 32 * s + 8 * t) =
                make_uint4(warp16::as_bf16<T>(v.x), warp16::as_bf16<T>(v.y), warp16::as_bf16<T>(v.z),
                           warp16::as_bf16<T>(v.w));
        }
}

// Column c = 32 a + 8 t + 2 m + i (< D) sits where the C tiles over columns put it: n-tile 4a + m,
// column 2t + i (warp::out_col), which is also the k order of warp16::rows_frag. A tile stored
// with its columns there gives, read with ldmatrix (.trans where k is the token), B fragments
// whose products come out in out_col's order (v38's causal backward, v45's causal forward).
__host__ __device__ constexpr int column_pos(int c) { return (c & ~31) | ((c & 6) << 2) | ((c >> 2) & 6) | (c & 1); }

// The tile's rows, as bf16, into columns 0 .. D - 1 of rows ([token][column], ldv elements) at
// column_pos: word m of the lane's vector s (columns 32 s + 8 t + 2 m, + 1) at 32 s + 8 m + 2 t.
template <class T, int D, int ldv>
__device__ __forceinline__ void put_rows_c_order(bf16* rows, int col0, const warp::Rows<T, D>& x) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int s = 0; s < D / 32; ++s)
#pragma unroll
            for (int m = 0; m < 4; ++m)
                *reinterpret_cast<std::uint32_t*>(rows + (col0 + g + 8 * r) * ldv + 32 * s + 8 * m + 2 * t) =
                    warp16::as_bf16<T>(warp16::word(x.x[r][s], m));
}

// Column D of the tile's right-hand side (one value per row) into column D, and what bf16
// leaves of it into column D + 1: StateSlice::store adds the two, so column D of the sum keeps
// about 16 bits (columns D + 2 .. D + 7 stay zero).
template <int D, int ldv>
__device__ __forceinline__ void put_column_d(bf16* rows, int col0, const float (&x)[2]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
    if (t != 0) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float hi = __bfloat162float(__float2bfloat16(x[r]));
        *reinterpret_cast<std::uint32_t*>(rows + (col0 + g + 8 * r) * ldv + D) = warp16::pack(hi, x[r] - hi);
    }
}

// Columns D + 2 .. D + 7 of rows tiles of `tokens` rows (the last n-tile's past D + 1), which
// put_rows and put_column_d never write: zeroed once.
template <int D, int ldv>
__device__ void zero_rows_padding(bf16* rows, int tokens) {
    for (int i = threadIdx.x; i < tokens * 6; i += blockDim.x) rows[(i / 6) * ldv + D + 2 + i % 6] = __float2bfloat16(0.0f);
}

// v53: a tile's right-hand sides ([v, 1] or [G, c]: the rows, then one value per row) into a wide
// tile (wgmma::Blocked): the rows' columns where the C tiles put them (as put_rows_c_order), the
// value in two bf16 parts in columns D, D + 1 (as put_column_d).
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

// The warp's slice of a state (M x (D + 1)) summed over tokens: m-tiles 0..3 of n-tiles w + 8 i,
// and for warps 0..3 m-tile w of the last n-tile (the extra column D). A = phi^T and B = the
// rows, both read [token][column] with ldmatrix.trans (v30): k is the token.
template <int D>
struct StateSlice {
    static constexpr int NTD = D / 8, FULL = D / 64;
    float acc[FULL * 4 + 1][4] = {};

    template <int ldp, int ldv, int kChunk>
    __device__ __forceinline__ void add(const bf16* phi, const bf16* rows) {
        const int w = threadIdx.x / 32, i = warp::lane_id() % 8, j = warp::lane_id() / 8;
        // Lane 8j + i addresses row i of block j: A's blocks (a0 .. a3) are tokens + 8 (j / 2),
        // features + 8 (j % 2); B's (b0, b1 of n-tile w, then of w + 8) tokens + 8 (j % 2),
        // columns + 64 (j / 2).
        const bf16* a_at = phi + (i + 8 * (j / 2)) * ldp + 8 * (j % 2);
        const bf16* b_at = rows + (i + 8 * (j % 2)) * ldv + 8 * w + 64 * (j / 2);
        const bf16* x_at = rows + (i + 8 * (j % 2)) * ldv + D;
#pragma unroll 2
        for (int kk = 0; kk < kChunk / 16; ++kk) {
            std::uint32_t a[4][4];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) ldmatrix_t(a[mt], a_at + 16 * kk * ldp + 16 * mt);
            if constexpr (FULL == 2) {
                std::uint32_t b[4];
                ldmatrix_t(b, b_at + 16 * kk * ldv);
#pragma unroll
                for (int mt = 0; mt < 4; ++mt) {
                    warp16::mma(acc[mt], a[mt], make_uint2(b[0], b[1]));
                    warp16::mma(acc[4 + mt], a[mt], make_uint2(b[2], b[3]));
                }
            } else {
                std::uint32_t b[2];
                ldmatrix_t(b, b_at + 16 * kk * ldv);
#pragma unroll
                for (int mt = 0; mt < 4; ++mt) warp16::mma(acc[mt], a[mt], make_uint2(b[0], b[1]));
            }
            if (w < 4) {
                // m-tile w of the extra column (its own loads: a register array cannot be
                // indexed by the warp number without going to local memory).
                std::uint32_t ax[4], bx[2];
                ldmatrix_t(ax, a_at + 16 * kk * ldp + 16 * w);
                ldmatrix_t(bx, x_at + 16 * kk * ldv);
                warp16::mma(acc[4 * FULL], ax, make_uint2(bx[0], bx[1]));
            }
        }
    }
    // f(value, m, col) for each element of the slice in the state (M x (D + 1)); column D is the
    // sum of the bf16 parts in columns D and D + 1 (put_column_d).
    template <class F>
    __device__ __forceinline__ void each(F f) const {
        const int w = threadIdx.x / 32, g = warp::lane_id() / 4, t = warp::lane_id() % 4;
        auto tile = [&](const float (&c)[4], int mt, int nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int m = 16 * mt + g + 8 * (e / 2), col = 8 * nt + 2 * t + e % 2;
                if (col < D + 1) f(c[e], m, col);
            }
        };
#pragma unroll
        for (int i = 0; i < FULL; ++i)
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) tile(acc[4 * i + mt], mt, w + 8 * i);
        if (w < 4 && t == 0) {
            const float c[4] = {acc[4 * FULL][0] + acc[4 * FULL][1], 0.0f, acc[4 * FULL][2] + acc[4 * FULL][3], 0.0f};
            tile(c, w, NTD);
        }
    }
    __device__ __forceinline__ void store(float* out) const {
        each([&](float v, int m, int col) { out[m * (D + 1) + col] = v; });
    }
    // The slice starts from a state x (M x (D + 1), float32) instead of zero (v34, the causal
    // forward): column D into its first part, the second part zero.
    __device__ __forceinline__ void load(const float* x) {
        const int w = threadIdx.x / 32, g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
        for (int i = 0; i < FULL; ++i)
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    acc[4 * i + mt][e] = __ldg(x + (16 * mt + g + 8 * (e / 2)) * (D + 1) + 8 * (w + 8 * i) + 2 * t + e % 2);
        if (w < 4)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                acc[4 * FULL][e] = t == 0 && e % 2 == 0 ? __ldg(x + (16 * w + g + 8 * (e / 2)) * (D + 1) + D) : 0.0f;
    }
    // The slice, rounded to bf16, into a state arranged by arrange_state: feature m, column col
    // is bf16 e' of word (ks NTW + nt) 32 + 4 g' + t' with t' = m / 16, ks = m % 16 / 4,
    // e' = m % 4, nt = 4 (col / 32) + col % 8 / 2, g' = 2 (col % 32 / 8) + col % 2 (col < D; column
    // D: nt = NTD, g' = 0). For element e of tile (i, mt) that is the lane's base plus a constant
    // (v42: each store had its own index arithmetic, ~15% of v10's stall samples).
    __device__ __forceinline__ void store_arranged(uint2* sa) const {
        constexpr int NTW = NTD + 1;
        const int w = threadIdx.x / 32, g = warp::lane_id() / 4, t = warp::lane_id() % 4;
        bf16* out = reinterpret_cast<bf16*>(sa);
        // m = 16 mt + g + 8 (e / 2), col = 8 (w + 8 i) + 2 t + e % 2.
        bf16* base = out + ((g / 4) * NTW + 4 * (w / 4) + t) * 128 + 32 * (w % 4) + g % 4;
#pragma unroll
        for (int i = 0; i < FULL; ++i)
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    base[(2 * (e / 2) * NTW + 8 * i) * 128 + 16 * (e % 2) + 4 * mt] = __float2bfloat16(acc[4 * i + mt][e]);
        if (w < 4 && t == 0) {
            // Column D (the sum of its two parts), m = 16 w + g + 8 h.
            bf16* col_d = out + ((g / 4) * NTW + NTD) * 128 + 4 * w + g % 4;
            col_d[0] = __float2bfloat16(acc[4 * FULL][0] + acc[4 * FULL][1]);
            col_d[2 * NTW * 128] = __float2bfloat16(acc[4 * FULL][2] + acc[4 * FULL][3]);
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
    constexpr int NTD = Lay::NTD, NTW = Lay::NTW, kChunk = Lay::kChunk, ldp = Lay::ldp, ldv = Lay::ldv;
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

    noncausal::arrange_projection<T, D>(wpu, wp);
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
        noncausal::zero_rows_padding<D, ldv>(rows_s, Lay::buffers(pass) * kChunk);
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
                warp16::project<T, D>(xk, wpu, u);
                features<Recip::approx>(u, d.beta, n, phi);
                noncausal::put_rows<T, D, ldv>(rows_c, col0, xv);
                const int g = lane_id() / 4;
                const float ones[2] = {g < n ? 1.0f : 0.0f, g + 8 < n ? 1.0f : 0.0f};
                noncausal::put_column_d<D, ldv>(rows_c, col0, ones);
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
                noncausal::put_rows<T, D, ldv>(rows_c, col0, xg);
                if (more) stage_g.fetch(a.dout, tile_row(c0 + kChunk), row_stride, tile_rows(c0 + kChunk));
                noncausal::put_column_d<D, ldv>(rows_c, col0, go);
                float dz[2][kP];
                dbeta += features_backward(u, phi, dph, d.beta, dz);
                float dq[NTD][4];
                warp16::planes_out<D>(dz, wpd, dq);
                const float one[2] = {1.0f, 1.0f};
                if (n > 0) store_rows<T, D>(a.dq, row0, row_stride, n, dq, one);
            }
            noncausal::put_features<ldp>(phi_c, col0, phi, scale);
            __syncthreads();  // the chunk's features and right-hand rows
            slice.template add<ldp, ldv, kChunk>(phi_c, rows_c);
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
