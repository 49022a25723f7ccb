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
// v44: 16 warps, four per 16-token tile w of the chunk (warp 4 role + w): query A (role 0), query B
// (1), key A (2), key B (3); at most 128 registers each, so four warps per scheduler (v12 had 8
// warps of 255 registers). Per chunk:
//   1. query A and key A: rows in, features (key A: phi(k) into phiK, its projection u for key B);
//      query B: dout (G) and o in, c = -(G . o), [G, c] into the chunk's tiles; key B: [v, 1];
//      barrier;
//   2. all: S minus the chunk's keys (each warp a slice of the state); barrier;
//   3. query A: den from S[:, D] and the blocks phi(q_i) phi(k_j)^T (j <= i) scaled by 1 / den_i
//      into shared memory, phi(q) / den into phiQ; query B: the blocks G_i . v_j + c_i; key A: dv's
//      state term phi(k) U[:, :D]; key B: dL/dphi(k)'s, v U[:, :D]^T + U[:, D]; barrier;
//   4. query B: G S[:, :D]^T + c S[:, D] to query A (a named barrier of the two); query A: the
//      chunk's keys j <= i plus that, dq; key A: the chunk's queries i >= j, dv; key B: theirs,
//      the features again from key A's u, dk; all: U plus the chunk's queries; barrier.
// Every operand is read with ldmatrix. Along the features the tiles and states keep the order
// of the C tiles over features (feature_pos), along the D columns that of the C tiles over
// columns (column_pos): one layout serves both products of a state (k over features, k over
// columns: ldmatrix with and without .trans), and every product's output is in the order that
// dphi_of and store_rows read. Every warp loads its rows at step 1 (v26's loads of the next
// chunk's rows at the end of step 4 would keep 32 more registers live there: spills at 128).
#pragma once

#include "stream_noncausal.cuh"

namespace racesp::cuda {

template <class T, int D>
struct CausalBackwardLayout {
    static constexpr int kTiles = 4, kChunk = kTiles * warp::kTile;  // 64 tokens
    static constexpr int kWarps = 4 * kTiles, kThreads = 32 * kWarps;  // v44: four warps per tile
    static constexpr int NTD = D / 8, NTW = NTD + 1, KSD = D / 16;
    // bf16 tiles and copies, rows of an odd number of 16-byte pieces (ldmatrix's 8 rows hit
    // distinct banks): features [token][feature] (72, 64 used), rows [token][column] and the
    // states' copies [feature][column] (D + 8: D, then column D of [v, 1] or [G, c] in two parts).
    static constexpr int ldp = warp::kM + 8, ldv = D + 8;
    static constexpr int ldS = D + 8;  // float32 states [feature][column]: 8 mod 32 words, column D at D
    static constexpr int kPairs = kTiles * (kTiles + 1) / 2;  // (query tile i, key tile j <= i)
    static constexpr int ldP = 24;                            // bf16 blocks [query][key]: rows 48 bytes apart
    static constexpr int kBlock = warp::kTile * ldP;
    // What a tile's two warps hand each other, [tile][element][lane] (no bank conflicts): the key
    // tile's projection u (8 floats a lane) and the query tile's partial dL/dphi (32).
    static constexpr int kU = 2 * warp::kP, kDph = 32;
    std::size_t red, wpu, wpd, s, u, sb, ub, phiK, phiQ, vt, gt, pairs, keys_u, query_dph, total;
    __host__ __device__ constexpr CausalBackwardLayout()
        : red(0), wpu(0), wpd(0), s(0), u(0), sb(0), ub(0), phiK(0), phiQ(0), vt(0), gt(0), pairs(0), keys_u(0),
          query_dph(0), total(0) {
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
        sb = take(warp::kM * ldv * b16);
        ub = take(warp::kM * ldv * b16);
        phiK = take(kChunk * ldp * b16);
        phiQ = take(kChunk * ldp * b16);
        vt = take(kChunk * ldv * b16);
        gt = take(kChunk * ldv * b16);
        pairs = take(kPairs * 2 * kBlock * b16);
        keys_u = take(kTiles * kU * 32 * sizeof(float));
        query_dph = take(kTiles * kDph * 32 * sizeof(float));  // 205 KB in all at D=128
        total = at;
    }
};

namespace causal_backward {

using bf16 = __nv_bfloat16;
using noncausal::ldmatrix;
using noncausal::ldmatrix_t;

// Feature f = 16 t + b (table t, bucket b) sits where the C tiles over features put it: n-tile
// b / 2, column 2t + b % 2 (stream::dphi_of), which is also the k order of warp16::feature_frag.
__host__ __device__ constexpr int feature_pos(int f) { return 8 * (f % 16 / 2) + 2 * (f / 16) + f % 2; }
// Column c = 32 a + 8 t + 2 m + i (< D) sits where the C tiles over columns put it: n-tile 4a + m,
// column 2t + i (warp::out_col), which is also the k order of warp16::rows_frag.
__host__ __device__ constexpr int column_pos(int c) { return (c & ~31) | ((c & 6) << 2) | ((c >> 2) & 6) | (c & 1); }

// The lane's features of its two rows, each row times scale[r], into a feature tile.
template <int ldp>
__device__ __forceinline__ void put_features(bf16* tile, int col0, const float (&phi)[2][warp::kR], const float (&scale)[2]) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
            *reinterpret_cast<std::uint32_t*>(tile + (col0 + g + 8 * r) * ldp + 8 * nt + 2 * t) =
                warp16::pack(phi[r][2 * nt] * scale[r], phi[r][2 * nt + 1] * scale[r]);
}

// The lane's rows, as bf16, into columns 0 .. D - 1 of a row tile: word m of the lane's vector
// s (columns 32 s + 8 t + 2 m, + 1) at column_pos.
template <class T, int D, int ldv>
__device__ __forceinline__ void put_rows(bf16* tile, int col0, const warp::Rows<T, D>& x) {
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int s = 0; s < D / 32; ++s)
#pragma unroll
            for (int m = 0; m < 4; ++m)
                *reinterpret_cast<std::uint32_t*>(tile + (col0 + g + 8 * r) * ldv + 32 * s + 8 * m + 2 * t) =
                    warp16::as_bf16<T>(warp16::word(x.x[r][s], m));
}

// A state (M x (D + 1), float32 from the scan) into the float32 copy x and the bf16 copy xb. The
// loads go out in batches of 8 per thread before their stores (v41: one global latency per batch;
// element by element, the two loads at the start and the one at the segment's first chunk were
// ~5% of the kernel's stall samples).
template <int D, int ldS, int ldv>
__device__ void load_state(float* x, bf16* xb, const float* src) {
    constexpr int kBatch = 8, kSize = warp::kM * (D + 1);
    for (int e0 = threadIdx.x; e0 < kSize; e0 += kBatch * blockDim.x) {
        float v[kBatch];
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
            const int e = e0 + k * blockDim.x;
            v[k] = e < kSize ? __ldg(src + e) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
            const int e = e0 + k * blockDim.x;
            if (e >= kSize) continue;
            const int f = feature_pos(e / (D + 1)), c = e % (D + 1);
            if (c < D) {
                x[f * ldS + column_pos(c)] = v[k];
                xb[f * ldv + column_pos(c)] = __float2bfloat16(v[k]);
            } else {
                x[f * ldS + D] = v[k];
            }
        }
    }
}

// x (float32) and its bf16 copy xb += sign * phi^T rows over the chunk, the warp's part: m-tile
// mt of the state and part kPart of kParts of the n-tiles (column D's, the last n-tile, is the sum
// of the rows' two parts). v41: the n-tiles are compile-time constants, so the loop and the
// read-modify-write have no branches, and the float32 loads go out together before the sums and
// stores (with the part chosen at run time, each n-tile had its own branches and its load's full
// latency: the two calls were ~30% of the kernel's stall samples).
template <int D, int ldS, int ldp, int ldv, int kChunk, int kPart, int kParts>
__device__ __forceinline__ void add_chunk_part(float* x, bf16* xb, float sign, const bf16* phi, const bf16* rows, int mt) {
    constexpr int NTW = D / 8 + 1, nt0 = kPart * NTW / kParts;
    constexpr int kCount = (kPart + 1) * NTW / kParts - nt0;
    constexpr bool kColumnD = nt0 + kCount == NTW;  // the last n-tile is column D's
    const int g = warp::lane_id() / 4, t = warp::lane_id() % 4;
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
    // ldmatrix.trans, k the token: A's blocks tokens + 8 (j / 2), features + 8 (j % 2); B's
    // tokens + 8 (j % 2), n-tile + j / 2.
    const bf16* a_at = phi + (i + 8 * (j / 2)) * ldp + 16 * mt + 8 * (j % 2);
    const bf16* b_at = rows + (i + 8 * (j % 2)) * ldv + 8 * (nt0 + j / 2);
    float acc[kCount][4] = {};
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
        std::uint32_t a[4];
        ldmatrix_t(a, a_at + 16 * kk * ldp);
#pragma unroll
        for (int s = 0; s + 1 < kCount; s += 2) {
            std::uint32_t b[4];
            ldmatrix_t(b, b_at + 16 * kk * ldv + 8 * s);
            warp16::mma(acc[s], a, make_uint2(b[0], b[1]));
            warp16::mma(acc[s + 1], a, make_uint2(b[2], b[3]));
        }
        if constexpr (kCount % 2 == 1) {
            std::uint32_t b[2];
            ldmatrix_t(b, b_at + 16 * kk * ldv + 8 * (kCount - 1));
            warp16::mma(acc[kCount - 1], a, make_uint2(b[0], b[1]));
        }
    }
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
            *reinterpret_cast<std::uint32_t*>(xb + f * ldv + 8 * (nt0 + s) + 2 * t) = warp16::pack(v.x, v.y);
        }
    if constexpr (kColumnD) {
        if (t == 0)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                x[(16 * mt + g + 8 * h) * ldS + D] += sign * (acc[kCount - 1][2 * h] + acc[kCount - 1][2 * h + 1]);
    }
}
// The whole block's sum: warp w takes m-tile w % 4 and part w / 4 of the n-tiles (four parts: at
// D=128 4, 4, 4 and 5 n-tiles, the 5 with column D); kPart is the warp's role, known where called.
template <int D, int ldS, int ldp, int ldv, int kChunk, int kPart>
__device__ __forceinline__ void add_chunk(float* x, bf16* xb, float sign, const bf16* phi, const bf16* rows) {
    add_chunk_part<D, ldS, ldp, ldv, kChunk, kPart, 4>(x, xb, sign, phi, rows, threadIdx.x / 32 % 4);
}

// acc[nt] += A X[:, :D] for the D columns' n-tiles, A's k-step ks over the features given by
// `frag(ks, a)`, X's bf16 copy read with k along its rows (.trans).
template <int D, int ldv, class Frag>
__device__ __forceinline__ void times_state(Frag frag, const bf16* xb, float (&acc)[D / 8][4]) {
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
        std::uint32_t a[4];
        frag(ks, a);
#pragma unroll
        for (int nt = 0; nt < D / 8; nt += 2) {
            std::uint32_t b[4];
            ldmatrix_t(b, xb + (16 * ks + i + 8 * (j % 2)) * ldv + 8 * (nt + j / 2));
            warp16::mma(acc[nt], a, make_uint2(b[0], b[1]));
            warp16::mma(acc[nt + 1], a, make_uint2(b[2], b[3]));
        }
    }
}

// acc[nf] += R X[:, :D]^T over the 8 n-tiles of features, R's k-step ks over the D columns
// given by `frag(ks, a)`, X's bf16 copy read with k along its columns (no .trans).
template <int D, int ldv, class Frag>
__device__ __forceinline__ void times_state_t(Frag frag, const bf16* xb, float (&acc)[8][4]) {
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        std::uint32_t a[4];
        frag(ks, a);
#pragma unroll
        for (int nf = 0; nf < 8; nf += 2) {
            std::uint32_t b[4];
            ldmatrix(b, xb + (8 * nf + i + 8 * (j / 2)) * ldv + 16 * ks + 8 * (j % 2));
            warp16::mma(acc[nf], a, make_uint2(b[0], b[1]));
            warp16::mma(acc[nf + 1], a, make_uint2(b[2], b[3]));
        }
    }
}

// acc[nt] += A tile over NT n-tiles, A a 16 x 16 block over 16 tokens of a tile (rows
// [token][...], ld) read with k along its rows (.trans).
template <int NT, int ld>
__device__ __forceinline__ void times_tile(const std::uint32_t (&a)[4], const bf16* tile, float (&acc)[NT][4]) {
    const int i = warp::lane_id() % 8, j = warp::lane_id() / 8;
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
        std::uint32_t b[4];
        ldmatrix_t(b, tile + (i + 8 * (j % 2)) * ld + 8 * (nt + j / 2));
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

// A named barrier of a tile's two warps (id 1 + tile; 0 is __syncthreads'): the one that hands
// over arrives, the one that takes waits; both order the shared memory written before it.
__device__ __forceinline__ void pair_arrive(int id) { asm volatile("bar.arrive %0, 64;" ::"r"(id) : "memory"); }
__device__ __forceinline__ void pair_sync(int id) { asm volatile("bar.sync %0, 64;" ::"r"(id) : "memory"); }

}  // namespace causal_backward

namespace causal_backward {

// What every warp of the block sees: the shared memory, the segment and the warp's tile. The
// roles below keep only their own values in registers: each runs the whole sweep in its own
// loop (v44: with one loop and a branch per role in every step, the compiler kept the four
// roles' registers live together at each barrier and spilled ~1 KB).
template <class T, int D>
struct Sweep {
    using Lay = CausalBackwardLayout<T, D>;
    static constexpr int NTD = Lay::NTD, KSD = Lay::KSD, kChunk = Lay::kChunk, kTiles = Lay::kTiles;
    static constexpr int ldp = Lay::ldp, ldv = Lay::ldv, ldS = Lay::ldS, ldP = Lay::ldP, kBlock = Lay::kBlock;
    const SegmentArgs<T>& a;
    const stream::SegmentBlock<D>& blk;
    uint4* wpu;
    uint2* wpd;
    float *S, *U;
    bf16 *Sb, *Ub, *phiK, *phiQ, *vt, *gt, *pairs;
    float *keys_u, *query_dph;  // the tile's hand-overs, [element][lane] from the lane's own
    int tile, lane, g, t, i8, j8;  // i8, j8: ldmatrix's lane 8 j8 + i8 addresses row i8 of block j8

    __device__ __forceinline__ Sweep(const SegmentArgs<T>& args, const stream::SegmentBlock<D>& b, unsigned char* sm)
        : a(args), blk(b) {
        constexpr Lay lay;
        wpu = reinterpret_cast<uint4*>(sm + lay.wpu);
        wpd = reinterpret_cast<uint2*>(sm + lay.wpd);
        S = reinterpret_cast<float*>(sm + lay.s);
        U = reinterpret_cast<float*>(sm + lay.u);
        Sb = reinterpret_cast<bf16*>(sm + lay.sb);
        Ub = reinterpret_cast<bf16*>(sm + lay.ub);
        phiK = reinterpret_cast<bf16*>(sm + lay.phiK);
        phiQ = reinterpret_cast<bf16*>(sm + lay.phiQ);
        vt = reinterpret_cast<bf16*>(sm + lay.vt);
        gt = reinterpret_cast<bf16*>(sm + lay.gt);
        pairs = reinterpret_cast<bf16*>(sm + lay.pairs);
        tile = threadIdx.x / 32 % 4;
        lane = warp::lane_id(), g = lane / 4, t = lane % 4, i8 = lane % 8, j8 = lane / 8;
        keys_u = reinterpret_cast<float*>(sm + lay.keys_u) + tile * Lay::kU * 32 + lane;
        query_dph = reinterpret_cast<float*>(sm + lay.query_dph) + tile * Lay::kDph * 32 + lane;
    }
    __device__ __forceinline__ int chunks() const { return (blk.end - blk.begin + kChunk - 1) / kChunk; }
    __device__ __forceinline__ int col0() const { return warp::kTile * tile; }
    // The warp's tile of chunk ci: its rows and its first row (clamped into the segment).
    __device__ __forceinline__ int tile_rows(int ci) const {
        return max(0, min(warp::kTile, blk.end - (blk.begin + ci * kChunk + warp::kTile * tile)));
    }
    __device__ __forceinline__ long long tile_row(int ci) const {
        return blk.row_of(min(blk.begin + ci * kChunk + warp::kTile * tile, blk.end - 1));
    }
    // Column D of a state: lane t's bucket b of a row, or by the C tiles over features (n-tile nf, element e).
    __device__ __forceinline__ float state_col_d(const float* x, int b) const { return x[feature_pos(warp::kR * t + b) * ldS + D]; }
    __device__ __forceinline__ float col_d_at(const float* x, int nf, int e) const { return x[(8 * nf + 2 * t + e % 2) * ldS + D]; }
    template <int kPart>
    __device__ __forceinline__ void add_queries_to_u() const {
        add_chunk<D, ldS, ldp, ldv, kChunk, kPart>(U, Ub, 1.0f, phiQ, gt);
    }

    // The sweep from the segment's end, the same barriers for every role: `role` does its steps
    // 1, 3 and 4 (which include its part of U's update); step 2, S's update, is everyone's.
    template <class Role>
    __device__ __forceinline__ void run(Role& role) const {
        const long long seg_stride = a.s_seg_stride;
        const float* s_start = a.s_start + blk.bh * a.d.nseg * seg_stride + blk.seg * seg_stride;
        for (int ci = chunks() - 1; ci >= 0; --ci) {
            role.step1(ci);
            __syncthreads();  // phiK, [v, 1], [G, c] of the chunk
            if (ci == 0) load_state<D, ldS, ldv>(S, Sb, s_start);
            else add_chunk<D, ldS, ldp, ldv, kChunk, Role::kRole>(S, Sb, -1.0f, phiK, vt);
            __syncthreads();  // S before the chunk
            role.step3(ci);
            __syncthreads();  // the blocks, phiQ
            role.step4(ci);
            __syncthreads();  // U; the chunk's tiles read before the next chunk's step 1
        }
    }
};

// Query A: the queries' features, den, the blocks phi(q) phi(k_j)^T / den, and dq.
template <class T, int D>
struct QueryA {
    using W = Sweep<T, D>;
    static constexpr int kRole = 0;  // warps 4 kRole .. 4 kRole + 3
    const W& w;
    float u[2][warp::kP], phi[2][warp::kR], inv[2];
    double dbeta = 0.0;
    __device__ __forceinline__ explicit QueryA(const W& sweep) : w(sweep) {}
    __device__ __forceinline__ void step1(int ci) {
        warp::Rows<T, D> x;
        x.load(w.a.q, w.tile_row(ci), w.blk.row_stride, w.tile_rows(ci));
        warp16::project<T, D>(x, w.wpu, u);
        warp::features(u, w.a.d.beta, w.tile_rows(ci), phi);
    }
    __device__ __forceinline__ void step3(int ci) {
        constexpr int ldp = W::ldp, ldP = W::ldP, kBlock = W::kBlock;
        float den[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float z = 0.0f;
#pragma unroll
            for (int b = 0; b < warp::kR; ++b) z += phi[r][b] * w.state_col_d(w.S, b);
            den[r] = z;
        }
        float pk[W::kTiles][2][4];  // phi(q) phi(k_j)^T, masked
#pragma unroll
        for (int j = 0; j < W::kTiles; ++j) {
            if (j > w.tile) continue;
            float half[2][2][4] = {};  // even and odd k-steps (v23)
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                std::uint32_t qa[4], b[4];  // phi(q); phi(k_j) with k along the features: keys 8 (j8 / 2) + i8
                warp16::feature_frag(phi, ks, qa);
                ldmatrix(b, w.phiK + (warp::kTile * j + w.i8 + 8 * (w.j8 / 2)) * ldp + 16 * ks + 8 * (w.j8 % 2));
                warp16::mma(half[ks % 2][0], qa, make_uint2(b[0], b[1]));
                warp16::mma(half[ks % 2][1], qa, make_uint2(b[2], b[3]));
            }
            stream::halves_sum(half, pk[j]);
            if (j == w.tile) stream::mask_diagonal(pk[j]);
#pragma unroll
            for (int r = 0; r < 2; ++r) den[r] += pk[j][0][2 * r] + pk[j][0][2 * r + 1] + pk[j][1][2 * r] + pk[j][1][2 * r + 1];
        }
        const int n = w.tile_rows(ci);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float whole = warp::sum_over_t(den[r]);  // on every lane: a shuffle of the whole warp
            inv[r] = w.g + 8 * r < n ? 1.0f / whole : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < W::kTiles; ++j) {
            if (j > w.tile) continue;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) pk[j][nt][e] *= inv[e / 2];
            put_block<ldP>(w.pairs + 2 * pair_of(w.tile, j) * kBlock, pk[j]);
        }
        put_features<ldp>(w.phiQ, w.col0(), phi, inv);
    }
    __device__ __forceinline__ void step4(int ci) {
        constexpr int ldp = W::ldp, ldP = W::ldP, kBlock = W::kBlock;
        float dph[8][4] = {};  // C tiles over features
        for (int j = 0; j <= w.tile; ++j) {
            std::uint32_t af[4];
            block_for_queries<ldP>(w.pairs + (2 * pair_of(w.tile, j) + 1) * kBlock, af);  // G . v_j + c
            times_tile<8, ldp>(af, w.phiK + warp::kTile * j * ldp, dph);
        }
        pair_sync(1 + w.tile);  // query B's G S[:, :D]^T + c S[:, D]
#pragma unroll
        for (int nf = 0; nf < 8; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) dph[nf][e] = (dph[nf][e] + w.query_dph[(4 * nf + e) * 32]) * inv[e / 2];
        float dphi[2][warp::kR], dz[2][warp::kP], dq[W::NTD][4];
        stream::dphi_of(dph, dphi);
        dbeta += warp::features_backward(u, phi, dphi, w.a.d.beta, dz);
        warp16::planes_out<D>(dz, w.wpd, dq);
        const float one[2] = {1.0f, 1.0f};
        warp::store_rows<T, D>(w.a.dq, w.tile_row(ci), w.blk.row_stride, w.tile_rows(ci), dq, one);
        w.template add_queries_to_u<kRole>();
    }
};

// Query B: dout (G) and c = -(G . o) into the chunk's tiles, the blocks G . v_j + c, and the
// state terms of dL/dphi(q) for query A.
template <class T, int D>
struct QueryB {
    using W = Sweep<T, D>;
    static constexpr int kRole = 1;  // warps 4 kRole .. 4 kRole + 3
    const W& w;
    warp::Rows<T, D> x;  // G
    float c[2];
    double dbeta = 0.0;
    __device__ __forceinline__ explicit QueryB(const W& sweep) : w(sweep) {}
    __device__ __forceinline__ void step1(int ci) {
        const int n = w.tile_rows(ci);
        const long long row0 = w.tile_row(ci);
        x.load(w.a.dout, row0, w.blk.row_stride, n);
        {
            warp::Rows<T, D> xo;
            xo.load(w.a.o, row0, w.blk.row_stride, n);
            stream::row_dots(x, xo, c);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) c[r] = -c[r];
        put_rows<T, D, W::ldv>(w.gt, w.col0(), x);
        noncausal::put_column_d<D, W::ldv>(w.gt, w.col0(), c);
    }
    __device__ __forceinline__ void step3(int) {
        constexpr int ldv = W::ldv, ldP = W::ldP, kBlock = W::kBlock;
        for (int j = 0; j <= w.tile; ++j) {
            float half[2][2][4] = {};  // G . v_j over even and odd k-steps
#pragma unroll
            for (int ks = 0; ks < W::KSD; ++ks) {
                std::uint32_t af[4], b[4];
                warp16::rows_frag_bf16<T, D>(x, ks, af);
                ldmatrix(b, w.vt + (warp::kTile * j + w.i8 + 8 * (w.j8 / 2)) * ldv + 16 * ks + 8 * (w.j8 % 2));
                warp16::mma(half[ks % 2][0], af, make_uint2(b[0], b[1]));
                warp16::mma(half[ks % 2][1], af, make_uint2(b[2], b[3]));
            }
            float att[2][4];
            stream::halves_sum(half, att);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) att[nt][e] += c[e / 2];
            if (j == w.tile) stream::mask_diagonal(att);
            put_block<ldP>(w.pairs + (2 * pair_of(w.tile, j) + 1) * kBlock, att);
        }
    }
    __device__ __forceinline__ void step4(int) {
        float part[8][4] = {};
        times_state_t<D, W::ldv>([&](int ks, std::uint32_t(&af)[4]) { warp16::rows_frag_bf16<T, D>(x, ks, af); }, w.Sb, part);
#pragma unroll
        for (int nf = 0; nf < 8; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) w.query_dph[(4 * nf + e) * 32] = part[nf][e] + c[e / 2] * w.col_d_at(w.S, nf, e);
        pair_arrive(1 + w.tile);
        w.template add_queries_to_u<kRole>();
    }
};

// Key A: the keys' features (into phiK, and their projection for key B) and dv.
template <class T, int D>
struct KeyA {
    using W = Sweep<T, D>;
    static constexpr int kRole = 2;  // warps 4 kRole .. 4 kRole + 3
    const W& w;
    float dv[W::NTD][4];
    double dbeta = 0.0;
    __device__ __forceinline__ explicit KeyA(const W& sweep) : w(sweep) {}
    __device__ __forceinline__ void step1(int ci) {
        warp::Rows<T, D> x;
        x.load(w.a.k, w.tile_row(ci), w.blk.row_stride, w.tile_rows(ci));
        float u[2][warp::kP], phi[2][warp::kR];
        warp16::project<T, D>(x, w.wpu, u);
        warp::features(u, w.a.d.beta, w.tile_rows(ci), phi);
        const float one[2] = {1.0f, 1.0f};
        put_features<W::ldp>(w.phiK, w.col0(), phi, one);
#pragma unroll
        for (int e = 0; e < 2 * warp::kP; ++e) w.keys_u[e * 32] = u[e / warp::kP][e % warp::kP];
    }
    __device__ __forceinline__ void step3(int) {
        // dv = phi(k) U[:, :D], phi(k) read back from phiK (the same bf16 values).
#pragma unroll
        for (int nt = 0; nt < W::NTD; ++nt) dv[nt][0] = dv[nt][1] = dv[nt][2] = dv[nt][3] = 0.0f;
        times_state<D, W::ldv>(
            [&](int ks, std::uint32_t(&af)[4]) {
                ldmatrix(af, w.phiK + (w.col0() + w.i8 + 8 * (w.j8 % 2)) * W::ldp + 16 * ks + 8 * (w.j8 / 2));
            },
            w.Ub, dv);
    }
    __device__ __forceinline__ void step4(int ci) {
        for (int i = w.tile; i < W::kTiles; ++i) {
            std::uint32_t af[4];
            block_for_keys<W::ldP>(w.pairs + 2 * pair_of(i, w.tile) * W::kBlock, af);  // phi(k) phi(q_i)^T / den_i
            times_tile<W::NTD, W::ldv>(af, w.gt + warp::kTile * i * W::ldv, dv);
        }
        const float one[2] = {1.0f, 1.0f};
        warp::store_rows<T, D>(w.a.dv, w.tile_row(ci), w.blk.row_stride, w.tile_rows(ci), dv, one);
        w.template add_queries_to_u<kRole>();
    }
};

// Key B: [v, 1] into the chunk's tiles, dL/dphi(k), the features again from key A's projection,
// and dk.
template <class T, int D>
struct KeyB {
    using W = Sweep<T, D>;
    static constexpr int kRole = 3;  // warps 4 kRole .. 4 kRole + 3
    const W& w;
    warp::Rows<T, D> x;  // v
    float dph[8][4];     // C tiles over features
    double dbeta = 0.0;
    __device__ __forceinline__ explicit KeyB(const W& sweep) : w(sweep) {}
    __device__ __forceinline__ void step1(int ci) {
        const int n = w.tile_rows(ci);
        x.load(w.a.v, w.tile_row(ci), w.blk.row_stride, n);
        put_rows<T, D, W::ldv>(w.vt, w.col0(), x);
        const float ones[2] = {w.g < n ? 1.0f : 0.0f, w.g + 8 < n ? 1.0f : 0.0f};
        noncausal::put_column_d<D, W::ldv>(w.vt, w.col0(), ones);
    }
    __device__ __forceinline__ void step3(int) {
        // dL/dphi(k) = v U[:, :D]^T + U[:, D].
#pragma unroll
        for (int nf = 0; nf < 8; ++nf) dph[nf][0] = dph[nf][1] = dph[nf][2] = dph[nf][3] = 0.0f;
        times_state_t<D, W::ldv>([&](int ks, std::uint32_t(&af)[4]) { warp16::rows_frag_bf16<T, D>(x, ks, af); }, w.Ub, dph);
#pragma unroll
        for (int nf = 0; nf < 8; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) dph[nf][e] += w.col_d_at(w.U, nf, e);
    }
    __device__ __forceinline__ void step4(int ci) {
        for (int i = w.tile; i < W::kTiles; ++i) {
            std::uint32_t af[4];
            block_for_keys<W::ldP>(w.pairs + (2 * pair_of(i, w.tile) + 1) * W::kBlock, af);  // v . G_i + c_i
            times_tile<8, W::ldp>(af, w.phiQ + warp::kTile * i * W::ldp, dph);
        }
        w.template add_queries_to_u<kRole>();
        const int n = w.tile_rows(ci);
        float u[2][warp::kP], phi[2][warp::kR];  // key A's projection, and the features again from it
#pragma unroll
        for (int e = 0; e < 2 * warp::kP; ++e) u[e / warp::kP][e % warp::kP] = w.keys_u[e * 32];
        warp::features(u, w.a.d.beta, n, phi);
        float dphi[2][warp::kR], dz[2][warp::kP], dk[W::NTD][4];
        stream::dphi_of(dph, dphi);
        dbeta += warp::features_backward(u, phi, dphi, w.a.d.beta, dz);
        warp16::planes_out<D>(dz, w.wpd, dk);
        const float one[2] = {1.0f, 1.0f};
        warp::store_rows<T, D>(w.a.dk, w.tile_row(ci), w.blk.row_stride, n, dk, one);
    }
};

template <class Role, class W>
__device__ __forceinline__ double sweep_as(const W& w) {
    Role role(w);
    w.run(role);
    return role.dbeta;
}

}  // namespace causal_backward

template <class T, int D>
__global__ void __launch_bounds__(CausalBackwardLayout<T, D>::kThreads, 1) causal_backward_kernel(const SegmentArgs<T> a) {
    using Lay = CausalBackwardLayout<T, D>;
    using namespace causal_backward;
    constexpr Lay lay;
    extern __shared__ __align__(128) unsigned char sm[];
    const Dims& d = a.d;
    const stream::SegmentBlock<D> blk(d);
    const Sweep<T, D> w(a, blk, sm);
    const long long state_size = static_cast<long long>(warp::kM) * (D + 1);
    const float* u_starts = a.u_start + blk.bh * d.nseg * a.u_seg_stride;
    const float* wp = a.planes + blk.h * static_cast<long long>(warp::kLP) * D;

    noncausal::arrange_projection<T, D>(w.wpu, wp);
    noncausal::arrange_planes_out<D>(w.wpd, wp);
    // The states after the segment: the next segment's start states, or after the shard's end.
    const bool last = blk.seg + 1 == d.nseg;
    load_state<D, Lay::ldS, Lay::ldv>(
        w.S, w.Sb, last ? a.s_end + blk.bh * state_size : a.s_start + (blk.bh * d.nseg + blk.seg + 1) * a.s_seg_stride);
    load_state<D, Lay::ldS, Lay::ldv>(w.U, w.Ub, last ? a.u_end + blk.bh * state_size : u_starts + (blk.seg + 1) * a.u_seg_stride);
    noncausal::zero_rows_padding<D, Lay::ldv>(w.vt, Lay::kChunk);
    noncausal::zero_rows_padding<D, Lay::ldv>(w.gt, Lay::kChunk);
    __syncthreads();

    // The role is the same for a whole warp, so each warp runs one loop with the same barriers.
    double dbeta;
    switch (threadIdx.x / 32 / 4) {  // Role::kRole
        case 0: dbeta = sweep_as<QueryA<T, D>>(w); break;
        case 1: dbeta = sweep_as<QueryB<T, D>>(w); break;
        case 2: dbeta = sweep_as<KeyA<T, D>>(w); break;
        default: dbeta = sweep_as<KeyB<T, D>>(w); break;
    }
    const double s = warp::block_sum(dbeta, reinterpret_cast<double*>(sm + lay.red), Lay::kWarps);
    if (threadIdx.x == 0) a.dbeta_part[blk.bh * d.nseg + blk.seg] = s;
}

}  // namespace racesp::cuda
