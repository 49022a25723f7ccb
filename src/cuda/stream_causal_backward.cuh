// v12 (experiments/gpu-notes.md): the causal backward pass of the kernel normalisation on warp
// tiles, for the sizes of v9-v11 (bf16/fp16, P = L = 4, D = 64 or 128). One block per (segment,
// head, batch entry) walks its segment from the end in chunks of 64 tokens (4 tiles of 16) with
// both states in shared memory as float32:
//   S: the forward state before the chunk (the keys before it). It starts as the state after the
//      segment and loses each chunk's keys; the segment's first chunk gets the exact start state
//      from the float64 scan instead, so rounding left by the subtractions ends there.
//   U: the backward state after the chunk (the queries after it). It starts as the state after the
//      segment (float64 scan) and gains each chunk's queries: additions only.
// Warps 0-3 take the queries of tile w, warps 4-7 the keys of tile w - 4. Per chunk:
//   1. all: rows in, features; the queries' features transposed (phiQT), the keys' (phiKT) and
//      [v, 1]^T (vT); barrier;
//   2. all: S minus the chunk's keys (each warp a share of the state's tiles); barrier;
//   3. queries: the normaliser den = phi(q) S[:, D] + sum_{j <= i in the chunk} phi(q_i) . phi(k_j),
//      Wm = [G / den, -(G . o) / den] from the forward's o (v14; v12 recomputed the whole
//      numerator phi(q) S + ... [v_j, 1]) into Wm^T, and the blocks phi(q_i) . phi(k_j) and
//      Wm_i . [v_j, 1] (j <= i) into shared memory for both sides;
//      keys: the state terms dL/dphi(k) = [v, 1] U^T and dv = phi(k) U[:, :D]; barrier;
//   4. queries: dL/dphi(q_i) = Wm_i S^T + sum_{j <= i} (Wm_i . [v_j, 1]) phi(k_j), then dq;
//      keys: + sum_{i >= j in the chunk} ([v_j, 1] . Wm_i) phi(q_i) and (phi(k_j) . phi(q_i)) Wm_i
//      from the same blocks, then dk, dv;
//      all: U plus the chunk's queries; barrier.
// The states are B operands read straight from the float32 copy; see SharedState for the layout
// that serves both products and for the rounding to TF32. v23: the query warps copy the chunk's
// o rows into shared memory with cp.async at step 1 and read them at step 3 (a global-memory
// latency off every chunk), and their step-3 products accumulate even and odd k-steps apart
// (dependent chains half as long, twice as many in flight); v25 does the same for the two
// 17-step state products, v26 loads the next chunk's q or k rows at the end of step 4.
#pragma once

#include "stream_kernels.cuh"

namespace racesp::cuda {

template <class T, int D>
struct CausalBackwardLayout {
    static constexpr int kWarps = 8, kThreads = 32 * kWarps;
    static constexpr int kTiles = 4, kChunk = kTiles * warp::kTile;  // 64 tokens
    static constexpr int ldT = kChunk + 8;   // floats: 8 mod 32, conflict-free 8-byte fragment loads
    static constexpr int ldV = kChunk + 10;  // T elements
    static constexpr int kRows = D + 8;      // columns of [x, 1] padded to whole n-tiles
    static constexpr int kStateFloats = warp::kM * (D + 1) + 8;
    static constexpr int kPairs = kTiles * (kTiles + 1) / 2;  // (query tile i, key tile j <= i)
    static constexpr int ldP = 24;  // floats: rows 24 apart, a half-warp's 8-byte loads hit distinct banks
    static constexpr int kBlockFloats = warp::kTile * ldP;
    std::size_t red, wpu, wpd, s, u, phiKT, phiQT, vT, wmT, pairs, stage, total;
    __host__ __device__ constexpr CausalBackwardLayout()
        : red(0), wpu(0), wpd(0), s(0), u(0), phiKT(0), phiQT(0), vT(0), wmT(0), pairs(0), stage(0), total(0) {
        std::size_t at = 0;
        auto take = [&](std::size_t bytes) {
            const std::size_t here = at;
            at += (bytes + 127) / 128 * 128;
            return here;
        };
        red = take(kWarps * sizeof(double));
        wpu = take(D / 8 * 2 * 32 * sizeof(float2));
        wpd = take(2 * D / 8 * 32 * sizeof(float2));
        s = take(kStateFloats * sizeof(float));
        u = take(kStateFloats * sizeof(float));
        phiKT = take(warp::kM * ldT * sizeof(float));
        phiQT = take(warp::kM * ldT * sizeof(float));
        vT = take(kRows * ldV * sizeof(T));
        wmT = take(kRows * ldT * sizeof(float));
        pairs = take(kPairs * 2 * kBlockFloats * sizeof(float));
        stage = take(kTiles * warp::StagedRows<T, D>::kBytes);  // the query warps' o rows: 221 KB in all at D=128
        total = at;
    }
};

namespace causal_backward {

using namespace warp;

// A state X (M x (D+1)) in shared memory, float32, row f at f (D+1) + 2 (f / 16). With D + 1 = 1
// mod 32 (D = 64, 128), both B-operand patterns hit 32 distinct banks: by_features (k over
// features 16t + 2ks + h, n over the columns out_col) and by_columns (k over columns in_col, n
// over features 16 (g/2) + 2nt + g%2, as arrange_state_t). The tensor cores read the top 19 bits
// of a TF32 operand (truncation), so each element is kept with half a TF32 unit added to its bits
// (CUTLASS's round_half_ulp_truncate): the fragment loads then give round-to-nearest (cvt.rna's
// TF32 value) with no instruction of their own, and the chunk sums take the half unit off and put
// it back. (Truncating alone biased every state product by -2^-11 on average: 2.0e-3 in dbeta
// against the run-time kernels in CudaFixedSizes; adding the half unit at every load cost 10% of
// the causal step.)
template <int D>
struct SharedState {
    static constexpr int W = D + 1;
    float* x;
    __device__ static int at(int f, int c) { return f * W + 2 * (f / 16) + c; }
    __device__ static float biased(float v) { return __uint_as_float(__float_as_uint(v) + 0x1000u); }
    __device__ static float unbiased(float v) { return __uint_as_float(__float_as_uint(v) - 0x1000u); }
    __device__ void by_features(int ks, int nt, std::uint32_t& b0, std::uint32_t& b1) const {
        const int g = lane_id() / 4, t = lane_id() % 4, f = feat_of(t, ks, 0);
        const int c = nt < D / 8 ? out_col<D>(nt, g) : D;  // column D + g: only g = 0 is real
        const bool real = nt < D / 8 || g == 0;
        b0 = real ? __float_as_uint(x[at(f, c)]) : 0u;
        b1 = real ? __float_as_uint(x[at(f + 1, c)]) : 0u;
    }
    __device__ void by_columns(int ks, int nt, std::uint32_t& b0, std::uint32_t& b1) const {
        const int g = lane_id() / 4, t = lane_id() % 4, f = kR * (g / 2) + 2 * nt + g % 2;
        if (ks < D / 8) {
            const int c = in_col<D>(ks, t, 0);
            b0 = __float_as_uint(x[at(f, c)]), b1 = __float_as_uint(x[at(f, c + 1)]);
        } else {
            b0 = t == 0 ? __float_as_uint(x[at(f, D)]) : 0u;  // columns D + 2t + h: only t = 0, h = 0 is real
            b1 = 0u;
        }
    }
    __device__ void load(const float* src) const {
        for (int e = threadIdx.x; e < kM * W; e += blockDim.x) x[at(e / W, e % W)] = biased(__ldg(src + e));
    }
};

// Token columns of phiQT, phiKT ([feature][token]) and Wm^T ([column][token]) are XOR-swizzled by
// a multiple of 8 chosen from the row (feature / 16, column / 8): the scalar fragment loads (rows
// 8t or 16t apart) and the pair loads (rows 16 (g/2) apart) then hit distinct banks, and pairs of
// neighbouring tokens stay neighbours.
__device__ __forceinline__ int swizzle(int x) { return 16 * (x % 2) + 8 * ((x / 2) % 2); }
template <int ldT>
__device__ __forceinline__ int phi_at(int f, int tok) { return f * ldT + (tok ^ swizzle(f / 16)); }
template <int ldT>
__device__ __forceinline__ int wm_at(int col, int tok) { return col * ldT + (tok ^ swizzle(col / 8)); }

template <int ldT>
__device__ __forceinline__ void put_features(float* phiT, int col0, const float (&phi)[2][kR]) {
    const int g = lane_id() / 4, t = lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int b = 0; b < kR; ++b) phiT[phi_at<ldT>(kR * t + b, col0 + g + 8 * r)] = tf32f(phi[r][b]);
}
template <int D, int ldT>
__device__ __forceinline__ void put_wm(float* wmT, int col0, const float (&wm)[D / 8 + 1][4]) {
    const int g = lane_id() / 4, t = lane_id() % 4;
#pragma unroll
    for (int nt = 0; nt < D / 8 + 1; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) wmT[wm_at<ldT>(out_col<D>(nt, 2 * t + e % 2), col0 + g + 8 * (e / 2))] = wm[nt][e];
}

// One element of vT as a TF32 operand (16-bit values are exact).
template <class T>
__device__ __forceinline__ std::uint32_t value_bits(const T* vT, int at) {
    const unsigned short h = reinterpret_cast<const unsigned short*>(vT)[at];
    if constexpr (std::is_same<T, __nv_bfloat16>::value) return static_cast<std::uint32_t>(h) << 16;
    else return __float_as_uint(__half2float(__ushort_as_half(h)));
}

// x (a SharedState's elements) += sign * phi^T B over the chunk: 4 x NTW C tiles of the state, the
// warp w of 8 taking m-tile w % 4 of the n-tiles w / 4, w / 4 + 2, ...; phi^T from phiT (swizzled),
// B's column c at token tok from bT[b_at(c, tok)] (a pair of neighbouring tokens).
template <class B, int D, int ldT, int kChunk, class BAt>
__device__ __forceinline__ void add_chunk(float* x, float sign, const float* phiT, const B* bT, BAt b_at) {
    constexpr int NTW = D / 8 + 1, kS = (NTW + 1) / 2;
    const int w = threadIdx.x / 32, g = lane_id() / 4, t = lane_id() % 4;
    const int mt = w % 4, nt0 = w / 4;
    float acc[kS][4] = {};
#pragma unroll 2
    for (int kk = 0; kk < kChunk / 8; ++kk) {
        const int tok = 8 * kk + 2 * t;
        const float2 lo = *reinterpret_cast<const float2*>(phiT + phi_at<ldT>(16 * mt + g, tok));
        const float2 hi = *reinterpret_cast<const float2*>(phiT + phi_at<ldT>(16 * mt + g + 8, tok));
        const std::uint32_t a[4] = {__float_as_uint(lo.x), __float_as_uint(hi.x), __float_as_uint(lo.y),
                                    __float_as_uint(hi.y)};
#pragma unroll
        for (int s = 0; s < kS; ++s) {
            const int nt = nt0 + 2 * s;
            if (nt >= NTW) continue;
            std::uint32_t b0, b1;
            stream::b_pair(bT, b_at(8 * nt + g, tok), b0, b1);
            mma(acc[s], a, b0, b1);
        }
    }
#pragma unroll
    for (int s = 0; s < kS; ++s)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int m = 16 * mt + g + 8 * (e / 2), col = 8 * (nt0 + 2 * s) + 2 * t + e % 2;
            if (col <= D) {
                float& v = x[SharedState<D>::at(m, col)];
                v = SharedState<D>::biased(SharedState<D>::unbiased(v) + sign * acc[s][e]);
            }
        }
}

// The 16 x 16 blocks of query tile i against key tile j <= i that both sides use, computed once by
// the queries' warp: block 0 = phi(q) phi(k)^T, block 1 = Wm [v, 1]^T, masked on the diagonal,
// TF32, stored [key][query] (ld ldP) from their C tiles (row: query g + 8 (e/2), column: key
// 8 nt + 2t + e % 2).
__host__ __device__ constexpr int pair_of(int i, int j) { return i * (i + 1) / 2 + j; }
template <int ldP>
__device__ __forceinline__ void put_block(float* blk, const float (&c)[2][4]) {
    const int g = lane_id() / 4, t = lane_id() % 4;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) blk[(8 * nt + 2 * t + e % 2) * ldP + g + 8 * (e / 2)] = tf32f(c[nt][e]);
}
// As the queries' A fragment of k-step nt over the keys (what c_as_a gives from C tile nt).
template <int ldP>
__device__ __forceinline__ void block_for_queries(const float* blk, int nt, std::uint32_t (&a)[4]) {
    const int g = lane_id() / 4, k = 8 * nt + 2 * (lane_id() % 4);
    a[0] = __float_as_uint(blk[k * ldP + g]), a[1] = __float_as_uint(blk[k * ldP + g + 8]);
    a[2] = __float_as_uint(blk[(k + 1) * ldP + g]), a[3] = __float_as_uint(blk[(k + 1) * ldP + g + 8]);
}
// Transposed, as the keys' A fragment of k-step nq over the queries (keys g, g + 8 as rows).
template <int ldP>
__device__ __forceinline__ void block_for_keys(const float* blk, int nq, std::uint32_t (&a)[4]) {
    const int g = lane_id() / 4, q = 8 * nq + 2 * (lane_id() % 4);
    const float2 lo = *reinterpret_cast<const float2*>(blk + g * ldP + q);
    const float2 hi = *reinterpret_cast<const float2*>(blk + (g + 8) * ldP + q);
    a[0] = __float_as_uint(lo.x), a[1] = __float_as_uint(hi.x), a[2] = __float_as_uint(lo.y), a[3] = __float_as_uint(hi.y);
}

}  // namespace causal_backward

template <class T, int D>
__global__ void __launch_bounds__(CausalBackwardLayout<T, D>::kThreads, 1) causal_backward_kernel(const SegmentArgs<T> a) {
    using Lay = CausalBackwardLayout<T, D>;
    using namespace warp;
    using namespace causal_backward;
    constexpr Lay lay;
    constexpr int NTD = D / 8, NTW = NTD + 1, kChunk = Lay::kChunk, ldT = Lay::ldT, ldV = Lay::ldV;
    extern __shared__ __align__(128) unsigned char sm[];
    double* red = reinterpret_cast<double*>(sm + lay.red);
    float2* wpu = reinterpret_cast<float2*>(sm + lay.wpu);
    float2* wpd = reinterpret_cast<float2*>(sm + lay.wpd);
    const SharedState<D> S{reinterpret_cast<float*>(sm + lay.s)};
    const SharedState<D> U{reinterpret_cast<float*>(sm + lay.u)};
    float* phiKT = reinterpret_cast<float*>(sm + lay.phiKT);
    float* phiQT = reinterpret_cast<float*>(sm + lay.phiQT);
    T* vT = reinterpret_cast<T*>(sm + lay.vT);
    float* wmT = reinterpret_cast<float*>(sm + lay.wmT);
    float* pairs = reinterpret_cast<float*>(sm + lay.pairs);
    const StagedRows<T, D> stage_o{reinterpret_cast<uint4*>(sm + lay.stage) + (threadIdx.x / 32 % 4) * (StagedRows<T, D>::kBytes / 16)};
    constexpr int ldP = Lay::ldP, kBlock = Lay::kBlockFloats;
    auto v_at = [](int col, int tok) { return col * ldV + tok; };
    auto w_at = [](int col, int tok) { return wm_at<ldT>(col, tok); };

    const Dims& d = a.d;
    const stream::SegmentBlock<D> blk(d);
    const int seg = blk.seg;
    const long long row_stride = blk.row_stride, bh = blk.bh;
    const long long state_size = static_cast<long long>(kM) * (D + 1);
    const int warp_id = threadIdx.x / 32, g = lane_id() / 4, t = lane_id() % 4;
    const bool queries = warp_id < 4;
    const int tile = warp_id % 4;  // the warp's tile in the chunk (queries or keys)
    const float* s_starts = a.s_start + bh * d.nseg * a.s_seg_stride;
    const float* u_starts = a.u_start + bh * d.nseg * a.u_seg_stride;
    const float* wp = a.planes + blk.h * static_cast<long long>(kLP) * D;

    stream::arrange_projection<D>(wpu, wp);
    stream::arrange_planes_out<D>(wpd, wp);
    // The states after the segment: the next segment's start states, or after the shard's end.
    const bool last = seg + 1 == d.nseg;
    S.load(last ? a.s_end + bh * state_size : s_starts + (seg + 1) * a.s_seg_stride);
    U.load(last ? a.u_end + bh * state_size : u_starts + (seg + 1) * a.u_seg_stride);
    for (int i = threadIdx.x; i < Lay::kRows * ldV; i += blockDim.x) vT[i] = from_float<T>(0.0f);  // rows D+1.. stay 0
    __syncthreads();

    double dbeta = 0.0;
    const int chunks = (blk.end - blk.begin + kChunk - 1) / kChunk;
    // The warp's tile of chunk ci: its rows and its first row (clamped into the segment).
    auto tile_rows = [&](int ci) { return max(0, min(kTile, blk.end - (blk.begin + ci * kChunk + kTile * tile))); };
    auto tile_row = [&](int ci) { return blk.row_of(min(blk.begin + ci * kChunk + kTile * tile, blk.end - 1)); };
    // The warp's q or k rows, which step 1 needs first. v26: those of the next chunk to walk are
    // loaded at the end of step 4, so that they are in flight during U's update and the barrier.
    Rows<T, D> x1;
    x1.load(queries ? a.q : a.k, tile_row(chunks - 1), row_stride, tile_rows(chunks - 1));
    for (int ci = chunks - 1; ci >= 0; --ci) {
        const int n = tile_rows(ci);
        const long long row0 = tile_row(ci);
        const int col0 = kTile * tile;
        // 1. Features; queries keep dout (x2) for step 3, keys v.
        float u[2][kP], phi[2][kR];
        Rows<T, D> x2;
        {
            x2.load(queries ? a.dout : a.v, row0, row_stride, n);
            if (queries) stage_o.fetch(a.o, row0, row_stride, n);  // read at step 3
            project<T, D, 1>(x1, wpu, u);
            features(u, d.beta, n, phi);
            put_features<ldT>(queries ? phiQT : phiKT, col0, phi);
            if (!queries) stream::put_values_t<T, D, ldV>(vT, col0, x2, n);
        }
        __syncthreads();  // phiQT, phiKT, vT of the chunk

        // 2. S before the chunk.
        if (ci == 0) S.load(s_starts + seg * a.s_seg_stride);
        else add_chunk<T, D, ldT, kChunk>(S.x, -1.0f, phiKT, vT, v_at);
        __syncthreads();  // S

        // 3. Queries: Wm. Keys: the state terms of dL/dphi(k) (dph) and dv (wide).
        float wide[NTW][4] = {};  // queries: Wm; keys: dv (tiles 0 .. NTD - 1)
        float dph[8][4] = {};     // dL/dphi as C tiles over features (by_columns order)
        if (queries) {
            // The lane's part of den: phi(q) S[:, D] (C column D: lane t = 0, elements 0 and 2),
            // then each block's row sums.
            float den[2];
            {
                float col[2][4] = {};  // even and odd k-steps
#pragma unroll
                for (int ks = 0; ks < 8; ++ks) {
                    std::uint32_t af[4], b0, b1;
                    feature_frag(phi, ks, af);
                    S.by_features(ks, NTD, b0, b1);
                    mma(col[ks % 2], af, b0, b1);
                }
                den[0] = col[0][0] + col[1][0], den[1] = col[0][2] + col[1][2];
            }
            for (int j = 0; j <= tile; ++j) {
                float half[2][2][4] = {};  // phi(q) phi(k_j)^T over even and odd k-steps
#pragma unroll
                for (int ks = 0; ks < 8; ++ks) {
                    std::uint32_t af[4];
                    feature_frag(phi, ks, af);
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt) {
                        const int key = kTile * j + 8 * nt + g;
                        mma(half[ks % 2][nt], af, __float_as_uint(phiKT[phi_at<ldT>(feat_of(t, ks, 0), key)]),
                            __float_as_uint(phiKT[phi_at<ldT>(feat_of(t, ks, 1), key)]));
                    }
                }
                float att[2][4];
                stream::halves_sum(half, att);
                if (j == tile) stream::mask_diagonal(att);
                put_block<ldP>(pairs + (2 * pair_of(tile, j)) * kBlock, att);
#pragma unroll
                for (int r = 0; r < 2; ++r) den[r] += att[0][2 * r] + att[0][2 * r + 1] + att[1][2 * r] + att[1][2 * r + 1];
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) den[r] = sum_over_t(den[r]);
            {
                Rows<T, D> xo;
                stage_o.read(xo);
                stream::gradient_from_output<T, D>(x2, xo, den, n, wide);
            }
            put_wm<D, ldT>(wmT, col0, wide);
            for (int j = 0; j <= tile; ++j) {
                float half[2][2][4] = {};  // Wm [v_j, 1]^T over even and odd k-steps
#pragma unroll
                for (int ks = 0; ks < NTW; ++ks) {
                    std::uint32_t af[4];
                    c_as_a(wide[ks], af);  // already TF32: Wm's C tile ks as k-step ks over columns
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt) {
                        const int key = kTile * j + 8 * nt + g;
                        mma(half[ks % 2][nt], af, value_bits(vT, v_at(in_col<D>(ks, t, 0), key)),
                            value_bits(vT, v_at(in_col<D>(ks, t, 1), key)));
                    }
                }
                float att[2][4];
                stream::halves_sum(half, att);
                if (j == tile) stream::mask_diagonal(att);
                put_block<ldP>(pairs + (2 * pair_of(tile, j) + 1) * kBlock, att);
            }
        } else {
            // dv = phi(k) U[:, :D].
#pragma unroll
            for (int ks = 0; ks < 8; ++ks) {
                std::uint32_t af[4];
                feature_frag(phi, ks, af);
#pragma unroll
                for (int nt = 0; nt < NTD; ++nt) {
                    std::uint32_t b0, b1;
                    U.by_features(ks, nt, b0, b1);
                    mma(wide[nt], af, b0, b1);
                }
            }
            float odd[8][4] = {};  // odd k-steps apart: two chains of 9 links instead of one of 17
#pragma unroll
            for (int ks = 0; ks < NTW; ++ks) {
                std::uint32_t af[4];
                values_frag<T, D>(x2, ks, n, af);
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    std::uint32_t b0, b1;
                    U.by_columns(ks, nt, b0, b1);
                    mma(ks % 2 ? odd[nt] : dph[nt], af, b0, b1);
                }
            }
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) dph[nt][e] += odd[nt][e];
        }
        __syncthreads();  // Wm^T

        // 4. The chunk's own terms, the gradients out, and U before the chunk.
        const float one[2] = {1.0f, 1.0f};
        if (queries) {
            float odd[8][4] = {};  // odd k-steps apart: two chains of 9 links instead of one of 17
#pragma unroll
            for (int ks = 0; ks < NTW; ++ks) {
                std::uint32_t af[4];
                c_as_a(wide[ks], af);
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    std::uint32_t b0, b1;
                    S.by_columns(ks, nt, b0, b1);
                    mma(ks % 2 ? odd[nt] : dph[nt], af, b0, b1);
                }
            }
            for (int j = 0; j <= tile; ++j) {
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    std::uint32_t af[4];
                    block_for_queries<ldP>(pairs + (2 * pair_of(tile, j) + 1) * kBlock, nt, af);  // Wm [v_j, 1]^T
                    const int key = kTile * j + 8 * nt + 2 * t;
#pragma unroll
                    for (int nf = 0; nf < 8; ++nf)
                        mma(nt ? odd[nf] : dph[nf], af, *reinterpret_cast<const float2*>(phiKT + phi_at<ldT>(kR * (g / 2) + 2 * nf + g % 2, key)));
                }
            }
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) dph[nt][e] += odd[nt][e];
            float dphi[2][kR], dz[2][kP], dq[NTD][4];
            stream::dphi_of(dph, dphi);
            dbeta += features_backward(u, phi, dphi, d.beta, dz);
            planes_out<D>(dz, wpd, dq);
            store_rows<T, D>(a.dq, row0, row_stride, n, dq, one);
        } else {
            for (int i = tile; i < Lay::kTiles; ++i) {
                const float* kq = pairs + 2 * pair_of(i, tile) * kBlock;  // phi(q_i) phi(k)^T
                const float* vw = kq + kBlock;                          // Wm_i [v, 1]^T
#pragma unroll
                for (int nq = 0; nq < 2; ++nq) {
                    const int query = kTile * i + 8 * nq + 2 * t;
                    std::uint32_t af[4];
                    block_for_keys<ldP>(vw, nq, af);
#pragma unroll
                    for (int nf = 0; nf < 8; ++nf)
                        mma(dph[nf], af, *reinterpret_cast<const float2*>(phiQT + phi_at<ldT>(kR * (g / 2) + 2 * nf + g % 2, query)));
                    block_for_keys<ldP>(kq, nq, af);
#pragma unroll
                    for (int nt = 0; nt < NTD; ++nt)
                        mma(wide[nt], af, *reinterpret_cast<const float2*>(wmT + wm_at<ldT>(out_col<D>(nt, g), query)));
                }
            }
            float dphi[2][kR], dz[2][kP], dk[NTD][4];
            stream::dphi_of(dph, dphi);
            dbeta += features_backward(u, phi, dphi, d.beta, dz);
            store_rows<T, D>(a.dv, row0, row_stride, n, wide, one);
            planes_out<D>(dz, wpd, dk);
            store_rows<T, D>(a.dk, row0, row_stride, n, dk, one);
        }
        if (ci > 0) x1.load(queries ? a.q : a.k, tile_row(ci - 1), row_stride, tile_rows(ci - 1));
        add_chunk<float, D, ldT, kChunk>(U.x, 1.0f, phiQT, wmT, w_at);
        __syncthreads();  // U; phiQT, phiKT, vT, Wm^T read before the next chunk's step 1
    }

    const double s = block_sum(dbeta, red, Lay::kWarps);
    if (threadIdx.x == 0) a.dbeta_part[bh * d.nseg + seg] = s;
}

}  // namespace racesp::cuda
