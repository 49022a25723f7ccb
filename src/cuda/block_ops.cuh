// Block-wide building blocks of the segment kernels, on float32 tiles in shared memory:
// a small matrix product, loads and stores of token rows, and the RACE feature map with its
// backward. Every function is called by all threads of the block; block_gemm, feature_map and
// the row functions with sync = true end with a barrier, gemm and feature_map_backward do not
// (the caller closes the step: v4 lets independent parts of a chunk share one barrier).
// v5: loops step by kBlockThreads (every kernel runs with that block size), so that with the
// compile-time sizes of segment_kernel's Fixed configurations their trip counts are constants;
// tensor-core operands that were rounded to TF32 when written (RA/RB) skip the per-step rounding.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "segment_layout.hpp"

namespace racesp::cuda {

template <class T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }

template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

// Cm (m x n, leading dim ldc) =, += or -= A B, with A(i,p) = A[i*ars + p*acs] and
// B(p,j) = B[p*brs + j*bcs]. Each thread owns a 4x4 micro-tile whose rows and columns are
// interleaved (i = ti + r*nti, j = tj + c*ntj), so neighbouring threads read neighbouring
// columns of B and share rows of A (broadcast).
//
// v4: `gemm` is the product without the closing barrier, so that independent products (and
// other steps) of a chunk share one barrier; `wofs` rotates the tensor-core tiles over the warps
// (tile t goes to warp (t + wofs) mod warps), so that two small products issued back to back
// land on different warps; `mask` (Into::set only) zeroes the entries above the diagonal (j > i)
// of the result, the causal mask, written by the thread or warp that computed them.
enum class Into { set, add, sub };

// The same product on tensor cores: one warp per 16x16 output tile, TF32 operands (10-bit
// mantissa, so used only for bf16/fp16 inputs), float32 accumulation. LA/LB: row- or col-major.
// TF32 rounding (round to nearest, ties away, as wmma::__float_to_tf32) of a value that is read
// only as a tensor-core operand: v5 rounds such tiles once when they are written (PR kernels)
// instead of at every k-step of every product that reads them; the products see the same bits.
template <bool round>
__device__ __forceinline__ float tf32_if(float x) {
    if constexpr (round) return nvcuda::wmma::__float_to_tf32(x);
    else return x;
}

// RA / RB (v5): A / B hold TF32 values already (rounded when written, or bf16/fp16 token rows,
// which are exact in TF32), so the k-step's conversions are skipped; RC (Into::set only): the
// result is rounded to TF32 when stored, for a tile read only as a later product's operand.
template <Into mode, class LA, class LB, bool RA, bool RB, bool RC>
__device__ __forceinline__ void wmma_gemm(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* Cm,
                          int ldc, int wofs, bool mask) {
    using namespace nvcuda;
    constexpr bool a_row = std::is_same<LA, wmma::row_major>::value;
    constexpr bool b_row = std::is_same<LB, wmma::row_major>::value;
    constexpr int warps = kBlockThreads / 32;
    const int tn = n / 16;
    const int warp = (threadIdx.x / 32 + warps - wofs % warps) % warps;  // this warp's first tile
#pragma unroll 1
    for (int t = warp; t < (m / 16) * tn; t += warps) {
        const int i0 = (t / tn) * 16, j0 = (t % tn) * 16;
        wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
        if (mode == Into::set) wmma::fill_fragment(acc, 0.0f);
        else wmma::load_matrix_sync(acc, Cm + i0 * ldc + j0, ldc, wmma::mem_row_major);
        // Unrolled by two (v4): step p+8's shared-memory loads go out before step p's products.
        // (Explicitly double-buffered fragments spilled: 3 KB of stack in the backward kernel.)
#pragma unroll 2
        for (int p = 0; p < k; p += 8) {
            wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LA> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LB> b;
            wmma::load_matrix_sync(a, a_row ? A + i0 * lda + p : A + p * lda + i0, lda);
            wmma::load_matrix_sync(b, b_row ? B + p * ldb + j0 : B + j0 * ldb + p, ldb);
#pragma unroll
            for (int e = 0; e < a.num_elements; ++e) {
                const float x = RA ? a.x[e] : wmma::__float_to_tf32(a.x[e]);
                a.x[e] = mode == Into::sub ? -x : x;
            }
            if constexpr (!RB) {
#pragma unroll
                for (int e = 0; e < b.num_elements; ++e) b.x[e] = wmma::__float_to_tf32(b.x[e]);
            }
            wmma::mma_sync(acc, a, b, acc);
        }
        if constexpr (RC && mode == Into::set) {
#pragma unroll
            for (int e = 0; e < acc.num_elements; ++e) acc.x[e] = wmma::__float_to_tf32(acc.x[e]);
        }
        wmma::store_matrix_sync(Cm + i0 * ldc + j0, acc, ldc, wmma::mem_row_major);
        if (mask && j0 + 15 > i0) {
            __syncwarp();
            for (int e = threadIdx.x % 32; e < 256; e += 32) {
                const int i = i0 + e / 16, j = j0 + e % 16;
                if (j > i) Cm[i * ldc + j] = 0.0f;
            }
            __syncwarp();
        }
    }
}

template <Into mode, bool TC = false, bool RA = false, bool RB = false, bool RC = false>
__device__ __forceinline__ void gemm(int m, int n, int k, const float* A, int ars, int acs, const float* B, int brs, int bcs,
                     float* Cm, int ldc, int wofs = 0, bool mask = false) {
    if constexpr (TC) {
        // Tensor cores when the shape and the layouts allow (else the SIMT loop below).
        using namespace nvcuda;
        const bool a_row = acs == 1, b_row = bcs == 1;
        const int lda = a_row ? ars : acs, ldb = b_row ? brs : bcs;
        if (m % 16 == 0 && n % 16 == 0 && k % 8 == 0 && ldc % 4 == 0 && lda % 4 == 0 && ldb % 4 == 0 &&
            (a_row || ars == 1) && (b_row || brs == 1)) {
            using R = wmma::row_major;
            using Cl = wmma::col_major;
            if (a_row && b_row) wmma_gemm<mode, R, R, RA, RB, RC>(m, n, k, A, lda, B, ldb, Cm, ldc, wofs, mask);
            else if (a_row) wmma_gemm<mode, R, Cl, RA, RB, RC>(m, n, k, A, lda, B, ldb, Cm, ldc, wofs, mask);
            else if (b_row) wmma_gemm<mode, Cl, R, RA, RB, RC>(m, n, k, A, lda, B, ldb, Cm, ldc, wofs, mask);
            else wmma_gemm<mode, Cl, Cl, RA, RB, RC>(m, n, k, A, lda, B, ldb, Cm, ldc, wofs, mask);
            return;
        }
    }
    const int nti = (m + 3) / 4, ntj = (n + 3) / 4;
    for (int t = threadIdx.x; t < nti * ntj; t += kBlockThreads) {
        const int ti = t / ntj, tj = t % ntj;
        float acc[4][4] = {};
        // Unrolled so that several iterations' shared-memory loads are in flight at once.
#pragma unroll 4
        for (int p = 0; p < k; ++p) {
            float a[4], b[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int i = ti + r * nti;
                a[r] = i < m ? A[i * ars + p * acs] : 0.0f;
            }
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int j = tj + c * ntj;
                b[c] = j < n ? B[p * brs + j * bcs] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int i = ti + r * nti;
            if (i >= m) continue;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int j = tj + c * ntj;
                if (j >= n) continue;
                if (mode == Into::add) Cm[i * ldc + j] += acc[r][c];
                else if (mode == Into::sub) Cm[i * ldc + j] -= acc[r][c];
                else Cm[i * ldc + j] = mask && j > i ? 0.0f : acc[r][c];
            }
        }
    }
}

// The product followed by a barrier.
template <Into mode, bool TC = false, bool RA = false, bool RB = false, bool RC = false>
__device__ __forceinline__ void block_gemm(int m, int n, int k, const float* A, int ars, int acs, const float* B,
                                           int brs, int bcs, float* Cm, int ldc) {
    gemm<mode, TC, RA, RB, RC>(m, n, k, A, ars, acs, B, brs, bcs, Cm, ldc);
    __syncthreads();
}

// Rows t0..t0+n-1 of head h in a [B, T, H, D] tensor into dst (C rows, leading dim ld);
// rows n..C-1 become zero. With `ones`, column D is 1 on valid rows ([v, 1]).
template <class T>
__device__ void load_rows(float* dst, int ld, const T* src, long long row0, long long row_stride,
                          int D, int C, int n, bool ones, bool sync = true) {
    // Not unrolled (as in v3/v4: this is the fallback row path); unrolled with the compile-time
    // sizes it made the v5 query-totals kernel spill.
#pragma unroll 1
    for (int e = threadIdx.x; e < C * D; e += kBlockThreads) {
        const int i = e / D, d = e % D;
        dst[i * ld + d] = i < n ? to_float(src[row0 + i * row_stride + d]) : 0.0f;
    }
    if (ones)
        for (int i = threadIdx.x; i < C; i += kBlockThreads) dst[i * ld + D] = i < n ? 1.0f : 0.0f;
    if (sync) __syncthreads();
}

// dst rows t0..t0+n-1 = src (scaled per row by inv[i] when inv != nullptr, stride inv_ld).
template <class T>
__device__ void store_rows(T* dst, long long row0, long long row_stride, const float* src, int ld,
                           int D, int n, bool sync = true) {
#pragma unroll 1
    for (int e = threadIdx.x; e < n * D; e += kBlockThreads) {
        const int i = e / D, d = e % D;
        dst[row0 + i * row_stride + d] = from_float<T>(src[i * ld + d]);
    }
    if (sync) __syncthreads();
}

// ---- v4: token rows as 16-byte vectors, fetched one chunk ahead into registers ----
//
// A chunk of C rows x D elements of one head is C * D / EPV vectors of 16 bytes (EPV elements
// each); thread t owns vectors t, t + blockDim, ... (coalesced: neighbouring threads read
// neighbouring 16 bytes of a row). `fetch` issues the global loads of the next chunk and returns
// at once; `put` (next chunk) converts the registers into a float32 tile. So the loads' latency
// is spent while the block computes the current chunk instead of stalling every thread at each
// load (v1..v3 loaded rows element by element, one dependent global load after another).
// Used when D is a multiple of EPV, C * D <= kVecChunkElems and every pointer is 16-byte aligned
// (Dims::vec); otherwise load_rows / store_rows above.
constexpr int kVecChunkElems = 4096;

template <class T>
struct VecTraits {
    static constexpr int EPV = 16 / static_cast<int>(sizeof(T));          // elements per vector
    static constexpr int NV = kVecChunkElems / EPV / kBlockThreads;       // vectors per thread
};

template <class T> __device__ __forceinline__ void unpack16(const uint4& x, float* f);
template <> __device__ __forceinline__ void unpack16<float>(const uint4& x, float* f) {
    f[0] = __uint_as_float(x.x);
    f[1] = __uint_as_float(x.y);
    f[2] = __uint_as_float(x.z);
    f[3] = __uint_as_float(x.w);
}
template <> __device__ __forceinline__ void unpack16<__nv_bfloat16>(const uint4& x, float* f) {
    const unsigned w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        f[2 * j] = __uint_as_float(w[j] << 16);              // low half: the earlier element
        f[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
    }
}
template <> __device__ __forceinline__ void unpack16<__half>(const uint4& x, float* f) {
    const unsigned w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        __half2 h;
        memcpy(&h, &w[j], 4);
        const float2 v = __half22float2(h);
        f[2 * j] = v.x;
        f[2 * j + 1] = v.y;
    }
}

template <class T> __device__ __forceinline__ uint4 pack16(const float* f);
template <> __device__ __forceinline__ uint4 pack16<float>(const float* f) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
}
template <> __device__ __forceinline__ uint4 pack16<__nv_bfloat16>(const float* f) {
    unsigned w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(f[2 * j], f[2 * j + 1]);  // .x low = f[2j]
        memcpy(&w[j], &h, 4);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}
template <> __device__ __forceinline__ uint4 pack16<__half>(const float* f) {
    unsigned w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const __half2 h = __floats2half2_rn(f[2 * j], f[2 * j + 1]);
        memcpy(&w[j], &h, 4);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// EPV floats at p (16-byte aligned when `aligned`) in and out of shared memory.
template <int N>
__device__ __forceinline__ void read_floats(const float* p, bool aligned, float* f) {
    if (aligned) {
#pragma unroll
        for (int j = 0; j < N; j += 4) {
            const float4 v = *reinterpret_cast<const float4*>(p + j);
            f[j] = v.x, f[j + 1] = v.y, f[j + 2] = v.z, f[j + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int j = 0; j < N; ++j) f[j] = p[j];
    }
}
template <int N>
__device__ __forceinline__ void write_floats(float* p, bool aligned, const float* f) {
    if (aligned) {
#pragma unroll
        for (int j = 0; j < N; j += 4) *reinterpret_cast<float4*>(p + j) = make_float4(f[j], f[j + 1], f[j + 2], f[j + 3]);
    } else {
#pragma unroll
        for (int j = 0; j < N; ++j) p[j] = f[j];
    }
}

template <class T>
struct RowFetch {
    static constexpr int EPV = VecTraits<T>::EPV, NV = VecTraits<T>::NV;
    uint4 r[NV];

    // Global loads of rows row0 .. row0 + n - 1 (n <= C); rows n..C-1 become zeros.
    __device__ __forceinline__ void fetch(const T* src, long long row0, long long row_stride, int D, int C, int n) {
        const int vpr = D / EPV, total = C * vpr;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int e = threadIdx.x + j * kBlockThreads;
            uint4 x = make_uint4(0u, 0u, 0u, 0u);
            if (e < total) {
                const int i = e / vpr, c = e - i * vpr;
                if (i < n) x = __ldg(reinterpret_cast<const uint4*>(src + row0 + i * row_stride + c * EPV));
            }
            r[j] = x;
        }
    }
    // The fetched rows into dst (C rows, leading dim ld), like load_rows; ends with a barrier.
    __device__ __forceinline__ void put(float* dst, int ld, int D, int C, int n, bool ones, bool sync = true) const {
        const int vpr = D / EPV, total = C * vpr;
        const bool aligned = ld % 4 == 0;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int e = threadIdx.x + j * kBlockThreads;
            if (e < total) {
                const int i = e / vpr, c = e - i * vpr;
                float f[EPV];
                unpack16<T>(r[j], f);
                write_floats<EPV>(dst + i * ld + c * EPV, aligned, f);
            }
        }
        if (ones)
            for (int i = threadIdx.x; i < C; i += kBlockThreads) dst[i * ld + D] = i < n ? 1.0f : 0.0f;
        if (sync) __syncthreads();
    }
};

// dst rows row0 .. row0 + n - 1 = src (C rows, leading dim ld), 16 bytes per store; with
// `divide`, each row is multiplied by 1 / src[i][D] (the kernel normalisation of o).
template <class T>
__device__ void store_rows_vec(T* dst, long long row0, long long row_stride, const float* src, int ld, int D,
                               int n, bool divide, bool sync = true) {
    constexpr int EPV = VecTraits<T>::EPV;
    const int vpr = D / EPV, total = n * vpr;
    const bool aligned = ld % 4 == 0;
    for (int e = threadIdx.x; e < total; e += kBlockThreads) {
        const int i = e / vpr, c = e - i * vpr;
        float f[EPV];
        read_floats<EPV>(src + i * ld + c * EPV, aligned, f);
        if (divide) {
            const float inv = 1.0f / src[i * ld + D];
#pragma unroll
            for (int j = 0; j < EPV; ++j) f[j] *= inv;
        }
        *reinterpret_cast<uint4*>(dst + row0 + i * row_stride + c * EPV) = pack16<T>(f);
    }
    if (sync) __syncthreads();
}

// The feature map of n rows of X (DESIGN.md §1): u = tanh(X Wp^T) into u, then
// phi_l[r] = prod_p sigma(+-2 beta u_p), multiplied plane by plane from plane 0 as the CPU does;
// sigma(-y) is computed directly so a near-certain bit keeps its small probability's digits.
// Rows n..C-1 of phi are zero, so padding tokens contribute nothing.
// PR (v5): X and Wp hold TF32 values (rounded when written), so the projection skips the rounding.
template <bool TC, bool PR = false>
__device__ __forceinline__ void feature_map(const float* X, int ldD, const float* Wp, float* u, int ldLP,
                                   float* sig, int ldSig, float* phi, int ldM, int C, int n, int D,
                                   int L, int P, float beta) {
    const int LP = L * P, R = 1 << P, M = L * R;
    // Bit probabilities are floored at e^{-87/P} exactly as on the CPU (src/core/feature_map.hpp),
    // so phi(q) . phi(k) of the best bucket stays inside float32's range at large beta.
    const float floor = static_cast<float>(exp(-87.0 / P));
    block_gemm<Into::set, TC, PR, PR>(C, LP, D, X, ldD, 1, Wp, 1, ldD, u, ldLP);
    for (int e = threadIdx.x; e < C * LP; e += kBlockThreads) {
        const int i = e / LP, p = e % LP;
        const float uu = tanhf(u[i * ldLP + p]);
        u[i * ldLP + p] = uu;
        const float y = 2.0f * beta * uu;
        sig[i * ldSig + 2 * p] = fmaxf(1.0f / (1.0f + expf(-y)), floor);     // bit set
        sig[i * ldSig + 2 * p + 1] = fmaxf(1.0f / (1.0f + expf(y)), floor);  // bit clear
    }
    __syncthreads();
    // Not unrolled over items (v5: unrolled with compile-time sizes, the forward kernel spilled).
#pragma unroll 1
    for (int e = threadIdx.x; e < C * M; e += kBlockThreads) {
        const int i = e / M, m = e % M;
        float f = 0.0f;
        if (i < n) {
            const int l = m / R, r = m % R;
            const float* s = sig + i * ldSig + 2 * l * P;
            f = 1.0f;
#pragma unroll
            for (int p = 0; p < P; ++p) f *= s[2 * p + (((r >> (P - 1 - p)) & 1) ? 0 : 1)];
        }
        phi[i * ldM + m] = f;
    }
    __syncthreads();
}

// v6: the feature map for the Fixed kernels (D, L, P, C compile-time, C * L * P = kBlockThreads,
// LP = 16). Two barriers instead of three:
// 1. The projection X Wp^T (C x LP, k = D) is split over kProjGroups groups of the D axis: warp
//    (tile, group) computes one 16 x 16 partial tile (D / kProjGroups / 8 tensor-core k-steps, was
//    D / 8 on C / 16 = 2 warps) into `part`; barrier.
// 2. Thread (i, l, p) sums its element's partials (group order), computes u = tanh, the two bit
//    probabilities exactly as feature_map, gets the table's other planes' probabilities from the
//    neighbouring lanes (shuffles: the P threads of a (row, table) are consecutive lanes) and
//    writes R / P of the table's R features, multiplied plane by plane from plane 0 as before
//    (same bits as feature_map for the same u); barrier. No `sig` round trip through shared memory.
template <int D, int L, int P, int C>
__device__ __forceinline__ void feature_map_fixed(const float* X, int ldD, const float* Wp, float* u, int ldLP,
                                                  float* part, float* phi, int ldM, int n, float beta) {
    using namespace nvcuda;
    constexpr int LP = L * P, R = 1 << P, G = kProjGroups, KG = D / G, TI = C / 16;
    static_assert(LP == 16 && C % 16 == 0 && KG % 8 == 0, "fused feature map: one 16-column tile, k split in 8s");
    static_assert(C * L * P == kBlockThreads && R % P == 0 && 32 % P == 0, "fused feature map: one thread per (i, l, p)");
    const float floor = static_cast<float>(exp(-87.0 / P));
    const int warp = threadIdx.x / 32;
    if (warp < TI * G) {
        const int t = warp % TI, g = warp / TI;
        wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        // Unrolled by two as in wmma_gemm (fully unrolled, the 64-register kernels spilled more).
#pragma unroll 1
        for (int p = g * KG; p < (g + 1) * KG; p += 8) {
            // X rows are token rows (exact in TF32), Wp was rounded when loaded: no conversion.
            wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b;
            wmma::load_matrix_sync(a, X + t * 16 * ldD + p, ldD);
            wmma::load_matrix_sync(b, Wp + p, ldD);
            wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(part + (g * TI + t) * 256, acc, 16, wmma::mem_row_major);
    }
    __syncthreads();
    const int e = threadIdx.x;
    const int p = e % P, l = (e / P) % L, i = e / (P * L);
    const int col = l * P + p;
    float x = 0.0f;
#pragma unroll
    for (int g = 0; g < G; ++g) x += part[(g * TI + i / 16) * 256 + (i % 16) * 16 + col];
    const float uu = tanhf(x);
    u[i * ldLP + col] = uu;
    const float y = 2.0f * beta * uu;
    const float s1 = fmaxf(1.0f / (1.0f + expf(-y)), floor);  // bit set
    const float s0 = fmaxf(1.0f / (1.0f + expf(y)), floor);   // bit clear
    const int base = (threadIdx.x % 32) & ~(P - 1);
    float a1[P], a0[P];
#pragma unroll
    for (int q = 0; q < P; ++q) {
        a1[q] = __shfl_sync(0xffffffffu, s1, base + q);
        a0[q] = __shfl_sync(0xffffffffu, s0, base + q);
    }
    // This thread's features r = p * RPT + j: the first PB planes' bits are p's, the last JB
    // bits j's; the product keeps the plane order (1 * s_0 * s_1 ... as feature_map), so the
    // first PB factors are shared by the RPT features.
    constexpr int RPT = R / P;  // features per thread
    constexpr int JB = RPT == 1 ? 0 : RPT == 2 ? 1 : RPT == 4 ? 2 : RPT == 8 ? 3 : -1, PB = P - JB;
    static_assert(JB >= 0, "fused feature map: R / P must be 1, 2, 4 or 8");
    float pre = 1.0f;
#pragma unroll
    for (int q = 0; q < PB; ++q) pre *= ((p >> (PB - 1 - q)) & 1) ? a1[q] : a0[q];
    float f[RPT];
#pragma unroll
    for (int j = 0; j < RPT; ++j) {
        float v = pre;
#pragma unroll
        for (int q = PB; q < P; ++q) v *= ((j >> (P - 1 - q)) & 1) ? a1[q] : a0[q];
        f[j] = i < n ? v : 0.0f;
    }
    float* dst = phi + i * ldM + l * R + p * RPT;
    if constexpr (RPT == 4) {
        *reinterpret_cast<float4*>(dst) = make_float4(f[0], f[1], f[2], f[3]);
    } else {
#pragma unroll
        for (int j = 0; j < RPT; ++j) dst[j] = f[j];
    }
    __syncthreads();
}

// Backward of the feature map (DESIGN.md §2) for n rows: given g = dL/dphi, writes
// dL/dz into dz (C x LP; zero on padding rows) and returns this thread's part of dL/dbeta.
// No closing barrier (v4); the C * L (row, table) items start at thread `tofs`, so that the
// queries' and the keys' backward can run side by side on different threads.
// PR (v5): dz is read only as a tensor-core operand (dq = dz Wp), so it is rounded to TF32 here.
template <bool PR = false>
__device__ __forceinline__ double feature_map_backward(const float* u, int ldLP, const float* phi,
                                                       const float* g, int ldM, float* dz, int C, int n,
                                                       int L, int P, float beta, int tofs = 0) {
    const int R = 1 << P;
    double dbeta = 0.0;
    const int first = (threadIdx.x + kBlockThreads - tofs % kBlockThreads) % kBlockThreads;
    for (int e = first; e < C * L; e += kBlockThreads) {
        const int i = e / L, l = e % L;
        float* dzl = dz + i * ldLP + l * P;
        if (i >= n) {
            for (int p = 0; p < P; ++p) dzl[p] = 0.0f;
            continue;
        }
        const float* f = phi + i * ldM + l * R;
        const float* gl = g + i * ldM + l * R;
        float mp[10] = {};
        float m0 = 0.0f;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const float gf = gl[r] * f[r];
            m0 += gf;
#pragma unroll
            for (int p = 0; p < 10; ++p)
                if (p < P) mp[p] += ((r >> (P - 1 - p)) & 1) ? gf : -gf;
        }
        const float* ul = u + i * ldLP + l * P;
#pragma unroll
        for (int p = 0; p < 10; ++p) {
            if (p >= P) break;
            const float t = tanhf(beta * ul[p]);  // = 2 sigma(2 beta u) - 1
            const float common = mp[p] - t * m0;
            dbeta += static_cast<double>(ul[p]) * common;
            dzl[p] = tf32_if<PR>((1.0f - ul[p] * ul[p]) * beta * common);
        }
    }
    return dbeta;
}

}  // namespace racesp::cuda
