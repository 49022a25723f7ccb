// The TF32 warp-tile helpers (warp_tiles.cuh) that the causal warp-tile kernels share
// (stream_causal.cuh, stream_causal_totals.cuh, stream_causal_backward.cuh): v9's chunk and
// shared-memory strides, the block's segment, the states arranged as B operands, the masked
// 16 x 16 blocks and the per-warp slices of a state summed over a chunk. One warp owns a tile of
// 16 tokens; a block of 8 warps walks its segment in chunks of 128 tokens. (v9-v26 ran the
// non-causal passes on these too; v27 moved them to 16-bit operands: stream_noncausal.cuh.)
#pragma once

#include "segment_kernel.cuh"
#include "warp_tiles.cuh"

namespace racesp::cuda {

// The chunk and the strides of the transposed tiles in shared memory.
template <class T, int D>
struct StreamLayout {
    static constexpr int kWarps = 8, kThreads = 32 * kWarps;
    static constexpr int kChunk = kWarps * warp::kTile;  // tokens per step of the two sums
    static constexpr int NTD = D / 8, NTW = NTD + 1;
    static constexpr int ldT = kChunk + 8;   // floats: 8 mod 32, conflict-free 8-byte fragment loads
    static constexpr int ldV = kChunk + 10;  // T elements
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
// A state X (M x W) as B operand with k over features: phi X (n-tile nt: columns out_col).
template <int D>
__device__ void arrange_state(float2* out, const float* x) {
    constexpr int W = D + 1, NTW = D / 8 + 1;
    for (int i = threadIdx.x; i < 8 * NTW * 32; i += blockDim.x) {
        const int ks = i / (NTW * 32), nt = (i / 32) % NTW, g = (i % 32) / 4, t = i % 4;
        const int col = warp::out_col<D>(nt, g), f = warp::feat_of(t, ks, 0);
        out[i] = col < W ? make_float2(warp::tf32f(__ldg(x + f * W + col)), warp::tf32f(__ldg(x + (f + 1) * W + col)))
                         : make_float2(0.0f, 0.0f);
    }
}
// The same state as B operand with k over its columns: R X^T for rows R in the row layout
// (k-step ks: columns in_col; n-tile nt: features, column n = g is table g/2, bucket 2nt + g%2).
template <int D>
__device__ void arrange_state_t(float2* out, const float* x) {
    constexpr int W = D + 1;
    for (int i = threadIdx.x; i < (D / 8 + 1) * 8 * 32; i += blockDim.x) {
        const int ks = i / 256, nt = (i / 32) % 8, g = (i % 32) / 4, t = i % 4;
        const int f = warp::kR * (g / 2) + 2 * nt + g % 2;
        const int c0 = warp::in_col<D>(ks, t, 0), c1 = warp::in_col<D>(ks, t, 1);
        out[i] = make_float2(c0 < W ? warp::tf32f(__ldg(x + f * W + c0)) : 0.0f,
                             c1 < W ? warp::tf32f(__ldg(x + f * W + c1)) : 0.0f);
    }
}

// acc[nt] += A frag (k-step over features) x the arranged state, for all n-tiles.
template <int NT, int NTW>
__device__ __forceinline__ void times_state(const float (&phi)[2][warp::kR], const float2* sa, float (&acc)[NT][4]) {
#pragma unroll
    for (int ks = 0; ks < 8; ++ks) {
        std::uint32_t a[4];
        warp::feature_frag(phi, ks, a);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) warp::mma(acc[nt], a, sa[(ks * NTW + nt) * 32 + warp::lane_id()]);
    }
}

// dL/dphi in the lane's (row, bucket) layout from C tiles over features in arrange_state_t's
// order (n-tile nt, column 2t + h: table t, bucket 2nt + h).
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

// The tile's features transposed into phiT ([feature][token], ld ldT), rounded to TF32 (read
// only as tensor-core operands); col0 is the tile's first token column.
template <int ldT>
__device__ __forceinline__ void put_features_t(float* phiT, int col0, const float (&phi)[2][warp::kR]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int b = 0; b < warp::kR; ++b) phiT[(warp::kR * t + b) * ldT + col0 + g + 8 * r] = warp::tf32f(phi[r][b]);
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

// The warp's slice of a state (M x W) summed over tokens: m-tiles 0..3 of n-tiles w + 8 i, and
// for warps 0..3 m-tile w of the last n-tile (the extra column D). A = phi^T from phiT
// ([feature][token], ld ldT), B from bT ([column][token]): the k-step's tokens are permuted
// (k = t is token 2t, k = t + 4 token 2t + 1), so each fragment pair is one 8-byte load.
template <class B, int D>
struct StateSlice {
    static constexpr int NTD = D / 8, FULL = D / 64;
    float acc[FULL * 4 + 1][4] = {};

    __device__ __forceinline__ static void b_pair(const B* bT, int at, std::uint32_t& b0, std::uint32_t& b1) {
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
    // column_d: null, or column D of B per token (float32, TF32-rounded) in place of bT's row D.
    template <int ldT, int ldB, int kChunk>
    __device__ __forceinline__ void add(const float* phiT, const B* bT, const float* column_d = nullptr) {
        const int w = threadIdx.x / 32, g = warp::lane_id() / 4, t = warp::lane_id() % 4;
        const bool extra = w < 4;
#pragma unroll 2
        for (int kk = 0; kk < kChunk / 8; ++kk) {
            const int tok = 8 * kk + 2 * t;
            std::uint32_t a[4][4];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                const float2 lo = *reinterpret_cast<const float2*>(phiT + (16 * mt + g) * ldT + tok);
                const float2 hi = *reinterpret_cast<const float2*>(phiT + (16 * mt + g + 8) * ldT + tok);
                a[mt][0] = __float_as_uint(lo.x), a[mt][2] = __float_as_uint(lo.y);
                a[mt][1] = __float_as_uint(hi.x), a[mt][3] = __float_as_uint(hi.y);
            }
#pragma unroll
            for (int i = 0; i < FULL; ++i) {
                std::uint32_t b0, b1;
                b_pair(bT, (8 * (w + 8 * i) + g) * ldB + tok, b0, b1);
#pragma unroll
                for (int mt = 0; mt < 4; ++mt) warp::mma(acc[4 * i + mt], a[mt], b0, b1);
            }
            if (extra) {
                // m-tile w of the extra column (its own loads: a register array cannot be
                // indexed by the warp number without going to local memory).
                const float2 lo = *reinterpret_cast<const float2*>(phiT + (16 * w + g) * ldT + tok);
                const float2 hi = *reinterpret_cast<const float2*>(phiT + (16 * w + g + 8) * ldT + tok);
                const std::uint32_t ax[4] = {__float_as_uint(lo.x), __float_as_uint(hi.x), __float_as_uint(lo.y),
                                             __float_as_uint(hi.y)};
                std::uint32_t b0 = 0u, b1 = 0u;
                if (column_d == nullptr) {
                    b_pair(bT, (8 * NTD + g) * ldB + tok, b0, b1);
                } else if (g == 0) {
                    const float2 c = *reinterpret_cast<const float2*>(column_d + tok);
                    b0 = __float_as_uint(c.x), b1 = __float_as_uint(c.y);
                }
                warp::mma(acc[4 * FULL], ax, b0, b1);
            }
        }
    }
    // Visit the slice's elements: f(value or reference, m, col) for col < W.
    template <class F>
    __device__ __forceinline__ void each(F f) {
        constexpr int W = D + 1;
        const int w = threadIdx.x / 32, g = warp::lane_id() / 4, t = warp::lane_id() % 4;
        auto tile = [&](float (&c)[4], int mt, int nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int m = 16 * mt + g + 8 * (e / 2), col = 8 * nt + 2 * t + e % 2;
                if (col < W) f(c[e], m, col);
            }
        };
#pragma unroll
        for (int i = 0; i < FULL; ++i)
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) tile(acc[4 * i + mt], mt, w + 8 * i);
        if (w < 4) tile(acc[4 * FULL], w, NTD);
    }
    // The slice starts from a state (M x W) instead of zero.
    __device__ __forceinline__ void load(const float* x) {
        each([&](float& v, int m, int col) { v = __ldg(x + m * (D + 1) + col); });
    }
    // Writes the slice, rounded to TF32, into a state arranged by arrange_state (the inverse of
    // feat_of and out_col).
    __device__ __forceinline__ void store_arranged(float2* sa) {
        constexpr int NTW = NTD + 1;
        float* out = reinterpret_cast<float*>(sa);
        each([&](float& v, int m, int col) {
            const int t = m / warp::kR, ks = (m % warp::kR) / 2, hh = m % 2;
            const int nt = col < D ? 4 * (col / 32) + (col % 8) / 2 : NTD;
            const int g = col < D ? 2 * ((col % 32) / 8) + col % 2 : col - D;
            out[2 * ((ks * NTW + nt) * 32 + 4 * g + t) + hh] = warp::tf32f(v);
        });
    }
    __device__ __forceinline__ void store(float* out) {
        each([&](float& v, int m, int col) { out[m * (D + 1) + col] = v; });
    }
};

// acc += att [v, 1] for a 16-key block att (C tiles over keys key0 + 0..15) and [v, 1]^T in vT
// ([column][token], ld ldV): att's C tile nt is the A fragment of k-step nt (k = t: key 2t,
// k = t + 4: key 2t + 1 of the n-tile), so B pairs neighbouring keys of vT.
template <class T, int D, int ldV>
__device__ __forceinline__ void times_values(const float (&att)[2][4], const T* vT, int key0, float (&acc)[D / 8 + 1][4]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
        std::uint32_t af[4];
        warp::c_as_a(att[nt], af);
        const int key = key0 + 8 * nt + 2 * t;
#pragma unroll
        for (int ntv = 0; ntv < D / 8 + 1; ++ntv) {
            std::uint32_t b0, b1;
            StateSlice<T, D>::b_pair(vT, warp::out_col<D>(ntv, g) * ldV + key, b0, b1);
            warp::mma(acc[ntv], af, b0, b1);
        }
    }
}

}  // namespace stream

}  // namespace racesp::cuda
