// The segment kernel: one thread block per (segment, head, batch entry) walks the chunks of its
// segment in token order, with the forward state S (and for the backward, U) of the current
// position held in float32 in shared memory. Per chunk everything is a product of small tiles
// (DESIGN.md §4): features phi(Q), phi(K) on the fly; inter-chunk phi(Q) S; intra-chunk masked
// (phi(Q) phi(K)^T) [V, 1]; chunk totals phi(K)^T [V, 1]. The backward mirrors it with U, which
// starts at the sum over every query from the segment's start on and loses each chunk's
// contribution once the chunk is done, so both states move forward together in one sweep.
//
// Notation: Phi' is phi(Q) (kernel normalisation) or phi(Q) r / L with r = 1 / (A + eps)
// (bucket); Wm holds per query [G / den, -(G . o) / den] (kernel) or [G, 0] (bucket).
#pragma once

#include <type_traits>

#include "block_ops.cuh"
#include "segment_layout.hpp"

namespace racesp::cuda {

template <class T>
struct SegmentArgs {
    Dims d;
    Layout lay;
    const float* planes;  // [H, L*P, D]
    const T* q;
    const T* k;
    const T* v;
    const T* dout;
    T* o;
    T* dq;
    T* dk;
    T* dv;
    float* seg_out;           // key_state / query_state: segment totals [B, H, nseg, M, W]
    const float* s_start;     // forward state at each segment's start, [B, H, (nseg|1), M, W]
    long long s_seg_stride;   // M*W for causal (one per segment), 0 when one state serves all
    const float* u_start;     // backward state at each segment's start, likewise
    long long u_seg_stride;
    const float* u_end;       // causal backward: the state after the shard (incoming), [B, H, M, W]
    double* dbeta_part;       // backward: one float64 per block
};

// State tile (M x W, padded) from/to a contiguous M*W block.
__device__ inline void load_state(float* S, int ldW, const float* src, int M, int W) {
    for (int e = threadIdx.x; e < M * W; e += blockDim.x) S[(e / W) * ldW + e % W] = src[e];
    __syncthreads();
}
__device__ inline void zero_state(float* S, int ldW, int M, int W) {
    for (int e = threadIdx.x; e < M * W; e += blockDim.x) S[(e / W) * ldW + e % W] = 0.0f;
    __syncthreads();
}
__device__ inline void store_state(float* dst, const float* S, int ldW, int M, int W) {
    for (int e = threadIdx.x; e < M * W; e += blockDim.x) dst[e] = S[(e / W) * ldW + e % W];
    __syncthreads();
}

template <class T, Pass pass>
__global__ void __launch_bounds__(kBlockThreads) segment_kernel(const SegmentArgs<T> a) {
    extern __shared__ __align__(128) float smem[];
    constexpr bool TC = !std::is_same<T, float>::value;
    const Dims& d = a.d;
    const Layout& L = a.lay;
    const int seg = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int C = d.C, D = d.D, W = d.W, Wg = d.Wg, M = d.M, LP = d.LP;
    const long long row_stride = static_cast<long long>(d.H) * D;
    const long long bh = static_cast<long long>(b) * d.H + h;
    const long long state_size = static_cast<long long>(M) * W;

    float* Wp = smem + L.Wp;
    float* S = smem + L.S;
    float* U = smem + L.U;
    float* X = smem + L.X;
    float* V = smem + L.V;
    float* Wm = smem + L.Wm;
    float* uq = smem + L.uq;
    float* uk = smem + L.uk;
    float* sig = smem + L.sig;
    float* phq = smem + L.phq;
    float* phk = smem + L.phk;
    float* pht = smem + L.pht;
    float* rr = smem + L.r;
    float* att = smem + L.att;
    float* p2 = smem + L.p2;
    float* num = smem + L.num;
    float* dphq = smem + L.dphq;
    float* dphk = smem + L.dphk;
    float* dz = smem + L.dz;
    // Phi': phi(Q) itself for the kernel normalisation.
    float* phe = d.bucket ? pht : phq;

    // Zero everything once: padding columns of the [.., D+1] tiles must stay zero.
    for (std::size_t e = threadIdx.x; e < L.total; e += blockDim.x) smem[e] = 0.0f;
    __syncthreads();
    for (int e = threadIdx.x; e < LP * D; e += blockDim.x)
        Wp[(e / D) * L.ldD + e % D] = a.planes[h * static_cast<long long>(LP) * D + e];
    if (pass == Pass::key_state) {
        zero_state(S, L.ldW, M, W);
    } else {
        load_state(S, L.ldW, a.s_start + bh * (a.s_seg_stride ? d.nseg * a.s_seg_stride : state_size)
                                 + seg * a.s_seg_stride, M, W);
    }
    if (pass == Pass::query_state) zero_state(U, L.ldW, M, W);
    if (pass == Pass::backward)
        load_state(U, L.ldW, a.u_start + bh * (a.u_seg_stride ? d.nseg * a.u_seg_stride : state_size)
                                 + seg * a.u_seg_stride, M, W);
    double dbeta = 0.0;

    const int seg_begin = seg * d.NS;
    const int seg_end = min(d.T, seg_begin + d.NS);
    for (int t0 = seg_begin; t0 < seg_end; t0 += C) {
        const int n = min(C, seg_end - t0);
        const long long row0 = (static_cast<long long>(b) * d.T + t0) * row_stride + static_cast<long long>(h) * D;
        const bool need_keys = pass == Pass::key_state || d.causal || pass == Pass::backward;

        // Features of the chunk's keys and queries, and [V, 1].
        if (need_keys) {
            load_rows(X, L.ldD, a.k, row0, row_stride, D, C, n, false);
            feature_map<TC>(X, L.ldD, Wp, uk, L.ldLP, sig, L.ldSig, phk, L.ldM, C, n, D, d.L, d.P, d.beta);
            load_rows(V, L.ldW, a.v, row0, row_stride, D, C, n, true);
        }
        if (pass != Pass::key_state) {
            load_rows(X, L.ldD, a.q, row0, row_stride, D, C, n, false);
            feature_map<TC>(X, L.ldD, Wp, uq, L.ldLP, sig, L.ldSig, phq, L.ldM, C, n, D, d.L, d.P, d.beta);
            if (d.bucket) {
                // r_i[m] = 1 / (A_i[m] + eps), A_i the bucket counts visible to query i.
                for (int m = threadIdx.x; m < M; m += blockDim.x) {
                    float acount = S[m * L.ldW + D];
                    for (int i = 0; i < C; ++i) {
                        if (d.causal) acount += phk[i * L.ldM + m];
                        const float r = 1.0f / (acount + d.eps);
                        rr[i * L.ldM + m] = r;
                        pht[i * L.ldM + m] = phq[i * L.ldM + m] * r * d.inv_tables;
                    }
                }
                __syncthreads();
            }
            if (d.causal) {
                // att[i][j] = Phi'_i . phi(k_j), j <= i
                block_gemm<Into::set, TC>(C, C, M, phe, L.ldM, 1, phk, 1, L.ldM, att, L.ldC);
                mask_causal(att, C, L.ldC);
            }
            const bool need_num = pass == Pass::forward || !d.bucket;
            if (need_num) {
                block_gemm<Into::set, TC>(C, Wg, M, phe, L.ldM, 1, S, L.ldW, 1, num, L.ldW);
                if (d.causal) block_gemm<Into::add, TC>(C, Wg, C, att, L.ldC, 1, V, L.ldW, 1, num, L.ldW);
            }
        }

        if (pass == Pass::forward) {
            for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
                const int i = e / D, dd = e % D;
                const float x = d.bucket ? num[i * L.ldW + dd] : num[i * L.ldW + dd] * (1.0f / num[i * L.ldW + D]);
                a.o[row0 + i * row_stride + dd] = from_float<T>(x);
            }
            __syncthreads();
        }

        if (pass == Pass::query_state || pass == Pass::backward) {
            load_rows(Wm, L.ldW, a.dout, row0, row_stride, D, C, n, false);
            for (int i = threadIdx.x; i < C; i += blockDim.x) Wm[i * L.ldW + D] = 0.0f;
            __syncthreads();
            if (!d.bucket) {
                // One warp per query: den, G . o, then Wm = [G / den, -(G . o) / den].
                const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
                for (int i = warp; i < n; i += warps) {
                    const float inv = 1.0f / num[i * L.ldW + D];
                    float go = 0.0f;
                    for (int dd = lane; dd < D; dd += 32) go += Wm[i * L.ldW + dd] * (num[i * L.ldW + dd] * inv);
                    for (int off = 16; off > 0; off /= 2) go += __shfl_xor_sync(0xffffffffu, go, off);
                    for (int dd = lane; dd < D; dd += 32) Wm[i * L.ldW + dd] *= inv;
                    if (lane == 0) Wm[i * L.ldW + D] = -go * inv;
                }
                __syncthreads();
            }
            // H' = Wm S^T + mask(Wm [V,1]^T) phi(K): dL/dphi(q) (kernel), or G . B_i[m] (bucket).
            block_gemm<Into::set, TC>(C, M, Wg, Wm, L.ldW, 1, S, 1, L.ldW, dphq, L.ldM);
            if (d.causal) {
                block_gemm<Into::set, TC>(C, C, Wg, Wm, L.ldW, 1, V, 1, L.ldW, p2, L.ldC);
                mask_causal(p2, C, L.ldC);
                block_gemm<Into::add, TC>(C, M, C, p2, L.ldC, 1, phk, L.ldM, 1, dphq, L.ldM);
            }
            if (d.bucket) {
                // h = r H'; dL/dphi(q) = h / L; Y = Phi' h goes to the A column of U (kept in rr).
                for (int e = threadIdx.x; e < C * M; e += blockDim.x) {
                    const int i = e / M, m = e % M;
                    const float hval = rr[i * L.ldM + m] * dphq[i * L.ldM + m];
                    dphq[i * L.ldM + m] = hval * d.inv_tables;
                    rr[i * L.ldM + m] = pht[i * L.ldM + m] * hval;
                }
                __syncthreads();
            }
        }

        if (pass == Pass::query_state) {
            // U += Phi'^T Wm; bucket: U[:, D] -= sum_i Y_i.
            block_gemm<Into::add, TC>(M, Wg, C, phe, 1, L.ldM, Wm, L.ldW, 1, U, L.ldW);
            if (d.bucket) {
                for (int m = threadIdx.x; m < M; m += blockDim.x) {
                    float s = 0.0f;
                    for (int i = 0; i < C; ++i) s += rr[i * L.ldM + m];
                    U[m * L.ldW + D] -= s;
                }
                __syncthreads();
            }
        }

        if (pass == Pass::backward) {
            if (d.causal && t0 + C >= seg_end) {
                // U after the segment's last chunk is the next segment's start state, rounded once
                // from float64: no subtraction, so rounding left by large early terms stops here.
                load_state(U, L.ldW, seg + 1 < d.nseg ? a.u_start + bh * d.nseg * a.u_seg_stride + (seg + 1) * a.u_seg_stride
                                                      : a.u_end + bh * state_size, M, W);
            } else if (d.causal) {
                // U after this chunk: the sum over the queries after it.
                block_gemm<Into::sub, TC>(M, Wg, C, phe, 1, L.ldM, Wm, L.ldW, 1, U, L.ldW);
                if (d.bucket) {
                    for (int m = threadIdx.x; m < M; m += blockDim.x) {
                        float s = 0.0f;
                        for (int i = 0; i < C; ++i) s += rr[i * L.ldM + m];
                        U[m * L.ldW + D] += s;
                    }
                    __syncthreads();
                }
            }
            // dL/dphi(k_j) = U(j) [v_j, 1] with U(j) = U_after + the chunk's queries i >= j.
            block_gemm<Into::set, TC>(C, M, Wg, V, L.ldW, 1, U, 1, L.ldW, dphk, L.ldM);
            if (d.causal) {
                block_gemm<Into::add, TC>(C, M, C, p2, 1, L.ldC, phe, L.ldM, 1, dphk, L.ldM);
                if (d.bucket) {
                    for (int m = threadIdx.x; m < M; m += blockDim.x) {
                        float s = 0.0f;
                        for (int j = C - 1; j >= 0; --j) {
                            s += rr[j * L.ldM + m];
                            dphk[j * L.ldM + m] -= s;
                        }
                    }
                    __syncthreads();
                }
            }
            // dv_j = phi(k_j) U(j)[:, :D]
            block_gemm<Into::set, TC>(C, D, M, phk, L.ldM, 1, U, L.ldW, 1, num, L.ldW);
            if (d.causal) block_gemm<Into::add, TC>(C, D, C, att, 1, L.ldC, Wm, L.ldW, 1, num, L.ldW);
            store_rows(a.dv, row0, row_stride, num, L.ldW, D, n);
            // dq and dk through the feature map: dz, then dx = dz Wp.
            dbeta += feature_map_backward(uq, L.ldLP, phq, dphq, L.ldM, dz, C, n, d.L, d.P, d.beta);
            block_gemm<Into::set, TC>(C, D, LP, dz, L.ldLP, 1, Wp, L.ldD, 1, X, L.ldD);
            store_rows(a.dq, row0, row_stride, X, L.ldD, D, n);
            dbeta += feature_map_backward(uk, L.ldLP, phk, dphk, L.ldM, dz, C, n, d.L, d.P, d.beta);
            block_gemm<Into::set, TC>(C, D, LP, dz, L.ldLP, 1, Wp, L.ldD, 1, X, L.ldD);
            store_rows(a.dk, row0, row_stride, X, L.ldD, D, n);
        }

        // Chunk totals into S (key_state; causal passes move S past the chunk).
        if (pass == Pass::key_state || d.causal)
            block_gemm<Into::add, TC>(M, Wg, C, phk, 1, L.ldM, V, L.ldW, 1, S, L.ldW);
    }
    if (pass == Pass::backward) {
        // Block sum of dL/dbeta in a fixed order (deterministic).
        double* red = reinterpret_cast<double*>(smem + L.red);
        red[threadIdx.x] = dbeta;
        __syncthreads();
        if (threadIdx.x == 0) {
            double s = 0.0;
            for (int i = 0; i < blockDim.x; ++i) s += red[i];
            a.dbeta_part[bh * d.nseg + seg] = s;
        }
    }

    if (pass == Pass::key_state)
        store_state(a.seg_out + (bh * d.nseg + seg) * state_size, S, L.ldW, M, W);
    if (pass == Pass::query_state)
        store_state(a.seg_out + (bh * d.nseg + seg) * state_size, U, L.ldW, M, W);
}

}  // namespace racesp::cuda
