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
//
// v4 (experiments/gpu-notes.md): the token rows of chunk c+1 are loaded as 16-byte vectors into
// registers while chunk c computes (RowFetch), outputs leave as 16-byte stores, and products that
// do not depend on each other share one barrier (the keys' and queries' gradient products, the
// causal mask written by the product itself, the S update beside the chunk's last stores).
//
// v5: compile-time sizes. `Fixed<D, P, L, C>` instantiates the kernel with the common sizes as
// constants (tensor-core inputs only; Runtime keeps every size a run-time value, for the rest),
// so index arithmetic folds, loops have known trip counts and unroll, and the WMMA tiles' leading
// dimensions are immediates. In those kernels the tiles that are read only as tensor-core
// operands hold TF32 values from the moment they are written (Wp, Wm, dz, att, p2; token rows are
// exact in TF32 already), so the products skip most per-step conversions (same bits as v4).
//
// v8 (non-causal, `split_dq`): dq depends on q, dout and S only, not on U, so the query totals
// pass, which computes phi(q), Phi' S and Wm anyway, also computes dL/dphi(q) and dq; the backward
// pass then does only the keys' side (dk, dv) and reads no q or dout rows.
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
    T* o;  // forward: written; query totals and backward: the forward's output, read (v14)
    T* dq;
    T* dk;
    T* dv;
    float* seg_out;           // key_state / query_state: segment totals [B, H, nseg, M, W]
    const float* s_start;     // forward state at each segment's start, [B, H, (nseg|1), M, W]
    long long s_seg_stride;   // M*W for causal (one per segment), 0 when one state serves all
    const float* u_start;     // backward state at each segment's start, likewise
    long long u_seg_stride;
    const float* u_end;       // causal backward: the state after the shard (incoming), [B, H, M, W]
    const float* s_end;       // causal backward (v12): the forward state after the shard, [B, H, M, W]
    double* dbeta_part;       // backward: one float64 per block
    bool split_dq;            // v8, non-causal: query totals also give dq; the backward the keys' side only
    // v50, causal warp tiles: 1 / each query's normaliser, [B, H, T]. Null, or written by the
    // forward (v10) and read by the query totals in place of recomputing it.
    float* inv_den;
};

// State tile (M x W, padded) from/to a contiguous M*W block. The loads go out in batches of 8 per
// thread before the first store (one global latency per batch, not per element).
__device__ inline void load_state(float* S, int ldW, const float* src, int M, int W) {
    constexpr int batch = 8;
    const int n = M * W;
    for (int e0 = threadIdx.x; e0 < n; e0 += batch * kBlockThreads) {
        float x[batch];
#pragma unroll
        for (int j = 0; j < batch; ++j) {
            const int e = e0 + j * kBlockThreads;
            x[j] = e < n ? __ldg(src + e) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < batch; ++j) {
            const int e = e0 + j * kBlockThreads;
            if (e < n) S[(e / W) * ldW + e % W] = x[j];
        }
    }
    __syncthreads();
}
__device__ inline void zero_state(float* S, int ldW, int M, int W) {
    for (int e = threadIdx.x; e < M * W; e += kBlockThreads) S[(e / W) * ldW + e % W] = 0.0f;
    __syncthreads();
}
__device__ inline void store_state(float* dst, const float* S, int ldW, int M, int W) {
    for (int e = threadIdx.x; e < M * W; e += kBlockThreads) dst[e] = S[(e / W) * ldW + e % W];
    __syncthreads();
}

// Registers (v4): key totals and the forward have layouts that let two blocks share a
// multiprocessor (95 KB at D=128, M=64, bf16; the causal forward's 129 KB does not), so at most
// 64 registers a thread; query totals and the backward hold one block (shared memory) and may
// use up to 128 (no spills with the row-prefetch registers; at 64 they spilled).
template <Pass pass>
constexpr int min_blocks() { return pass == Pass::key_state || pass == Pass::forward ? 2 : 1; }

// Sizes of a kernel instantiation (v5): Runtime reads them from Dims, Fixed has them as constants.
struct Runtime {
    static constexpr bool on = false;
};
template <int D_, int P_, int L_, int C_>
struct Fixed {
    static constexpr bool on = true;
    static constexpr int D = D_, P = P_, L = L_, C = C_;
};

// The Dims the kernel computes with: with Fixed, the sizes are constants (the host's Dims hold the
// same values: the launcher picks a Fixed kernel only then), so make_layout folds too.
template <class F>
__device__ __forceinline__ Dims kernel_dims(const Dims& in) {
    Dims d = in;
    if constexpr (F::on) {
        d.D = F::D;
        d.W = F::D + 1;
        d.P = F::P;
        d.L = F::L;
        d.R = 1 << F::P;
        d.M = F::L * (1 << F::P);
        d.LP = F::L * F::P;
        d.C = F::C;
        d.tc = true;
        d.Wg = (F::D + 1 + 15) / 16 * 16;
        d.fused = true;
    }
    return d;
}

template <class T, Pass pass, class F = Runtime>
__global__ void __launch_bounds__(kBlockThreads, min_blocks<pass>()) segment_kernel(const SegmentArgs<T> a) {
    extern __shared__ __align__(128) float smem[];
    constexpr bool TC = !std::is_same<T, float>::value;
    static_assert(!F::on || TC, "Fixed sizes are for the tensor-core (bf16/fp16) kernels");
    // PR: tiles read only as tensor-core operands are rounded to TF32 when written (v5, Fixed only:
    // there every product runs on tensor cores, so no SIMT product reads a rounded tile).
    constexpr bool PR = F::on;
    const Dims d = kernel_dims<F>(a.d);
    const Layout L = F::on ? make_layout(d, pass) : a.lay;
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
    float* dz2 = smem + L.dz2;
    // Phi': phi(Q) itself for the kernel normalisation.
    float* phe = d.bucket ? pht : phq;
    // v6: the fused feature map's partial tiles (segment_layout.hpp): in rr where the bucket
    // normalisation has one (written only after both feature maps of a chunk), else in sig.
    float* part = pass != Pass::key_state && d.bucket ? rr : sig;

    // Zero everything once: padding columns of the [.., D+1] tiles must stay zero.
    for (std::size_t e = threadIdx.x; e < L.total; e += kBlockThreads) smem[e] = 0.0f;
    __syncthreads();
    for (int e = threadIdx.x; e < LP * D; e += kBlockThreads)
        Wp[(e / D) * L.ldD + e % D] = tf32_if<PR>(__ldg(a.planes + h * static_cast<long long>(LP) * D + e));
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
    // v8: which pass computes dq (and the queries' part of dbeta).
    const bool split = a.split_dq && !d.causal;
    const bool dq_here = pass == (split ? Pass::query_state : Pass::backward);
    const bool keys_only = pass == Pass::backward && split;
    const bool need_keys = pass_needs_keys(d, pass);
    const bool need_q = pass != Pass::key_state && !keys_only;
    const bool need_g = (pass == Pass::query_state || pass == Pass::backward) && !keys_only;
    const bool vec = d.vec;
    auto row_of = [&](int t) {
        return (static_cast<long long>(b) * d.T + t) * row_stride + static_cast<long long>(h) * D;
    };
    // v4: the rows of the next chunk are loaded into registers while this chunk computes.
    RowFetch<T> fk, fv, fq, fg;
    if (vec && seg_begin < seg_end) {
        const long long r0 = row_of(seg_begin);
        const int n0 = min(C, seg_end - seg_begin);
        if (need_keys) {
            fk.fetch(a.k, r0, row_stride, D, C, n0);
            fv.fetch(a.v, r0, row_stride, D, C, n0);
        }
        if (need_q) fq.fetch(a.q, r0, row_stride, D, C, n0);
        if (need_g) fg.fetch(a.dout, r0, row_stride, D, C, n0);
    }
    for (int t0 = seg_begin; t0 < seg_end; t0 += C) {
        const int n = min(C, seg_end - t0);
        const long long row0 = row_of(t0);
        const bool has_next = t0 + C < seg_end;
        const long long row_next = row_of(has_next ? t0 + C : t0);
        const int n_next = has_next ? min(C, seg_end - t0 - C) : 0;

        // v4 barriers: each __syncthreads below closes a step whose parts are independent (they
        // write different tiles and read none of them); the comment at each says what it orders.

        // Rows of the chunk: k into X, [v, 1] into V, dout into Wm as [G, 0]; one barrier.
        if (need_g) {
            for (int i = threadIdx.x; i < C; i += kBlockThreads) Wm[i * L.ldW + D] = 0.0f;
            if (vec) {
                fg.put(Wm, L.ldW, D, C, n, false, false);
                if (has_next) fg.fetch(a.dout, row_next, row_stride, D, C, n_next);
            } else {
                load_rows(Wm, L.ldW, a.dout, row0, row_stride, D, C, n, false, false);
            }
        }
        if (need_keys) {
            if (vec) {
                fk.put(X, L.ldD, D, C, n, false, false);
                fv.put(V, L.ldW, D, C, n, true, false);
                if (has_next) {
                    fk.fetch(a.k, row_next, row_stride, D, C, n_next);
                    fv.fetch(a.v, row_next, row_stride, D, C, n_next);
                }
            } else {
                load_rows(X, L.ldD, a.k, row0, row_stride, D, C, n, false, false);
                load_rows(V, L.ldW, a.v, row0, row_stride, D, C, n, true, false);
            }
        }
        if (need_g || need_keys) __syncthreads();  // rows in X, V, Wm
        if (need_keys) {
            if constexpr (F::on) feature_map_fixed<F::D, F::L, F::P, F::C>(X, L.ldD, Wp, uk, L.ldLP, part, phk, L.ldM, n, d.beta);
            else feature_map<TC, PR>(X, L.ldD, Wp, uk, L.ldLP, sig, L.ldSig, phk, L.ldM, C, n, D, d.L, d.P, d.beta);
        }

        if (need_q) {
            if (vec) {
                fq.put(X, L.ldD, D, C, n, false);  // X free: the keys' projections are done
                if (has_next) fq.fetch(a.q, row_next, row_stride, D, C, n_next);
            } else {
                load_rows(X, L.ldD, a.q, row0, row_stride, D, C, n, false);
            }
            if constexpr (F::on) feature_map_fixed<F::D, F::L, F::P, F::C>(X, L.ldD, Wp, uq, L.ldLP, part, phq, L.ldM, n, d.beta);
            else feature_map<TC, PR>(X, L.ldD, Wp, uq, L.ldLP, sig, L.ldSig, phq, L.ldM, C, n, D, d.L, d.P, d.beta);
            if (d.bucket) {
                // r_i[m] = 1 / (A_i[m] + eps), A_i the bucket counts visible to query i.
                for (int m = threadIdx.x; m < M; m += kBlockThreads) {
                    float acount = S[m * L.ldW + D];
                    for (int i = 0; i < C; ++i) {
                        if (d.causal) acount += phk[i * L.ldM + m];
                        const float r = 1.0f / (acount + d.eps);
                        rr[i * L.ldM + m] = r;
                        pht[i * L.ldM + m] = phq[i * L.ldM + m] * r * d.inv_tables;
                    }
                }
                __syncthreads();  // rr, pht
            }
            // att[i][j] = Phi'_i . phi(k_j), j <= i (masked as it is written); num = Phi' S.
            const bool need_num = pass == Pass::forward || !d.bucket;
            if (d.causal) gemm<Into::set, TC, false, false, PR>(C, C, M, phe, L.ldM, 1, phk, 1, L.ldM, att, L.ldC, 0, true);
            if (need_num) gemm<Into::set, TC>(C, Wg, M, phe, L.ldM, 1, S, L.ldW, 1, num, L.ldW, d.causal ? 4 : 0);
            if (d.causal || need_num) __syncthreads();  // att, num
            if (d.causal && need_num) block_gemm<Into::add, TC, PR, PR>(C, Wg, C, att, L.ldC, 1, V, L.ldW, 1, num, L.ldW);
        }

        if (pass == Pass::forward) {
            // o rows beside the causal S update (reads phk, V; S was last read by num above).
            if (vec) {
                store_rows_vec(a.o, row0, row_stride, num, L.ldW, D, n, !d.bucket, false);
            } else {
                for (int e = threadIdx.x; e < n * D; e += kBlockThreads) {
                    const int i = e / D, dd = e % D;
                    const float x = d.bucket ? num[i * L.ldW + dd] : num[i * L.ldW + dd] * (1.0f / num[i * L.ldW + D]);
                    a.o[row0 + i * row_stride + dd] = from_float<T>(x);
                }
            }
            if (d.causal) gemm<Into::add, TC, false, PR>(M, Wg, C, phk, 1, L.ldM, V, L.ldW, 1, S, L.ldW, 4);
            __syncthreads();  // num read, S moved past the chunk
        }

        if (pass == Pass::key_state) block_gemm<Into::add, TC, false, PR>(M, Wg, C, phk, 1, L.ldM, V, L.ldW, 1, S, L.ldW);

        if (need_g) {
            if (!d.bucket) {
                // One warp per query: den, G . o, then Wm = [G / den, -(G . o) / den].
                const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = kBlockThreads / 32;
                for (int i = warp; i < n; i += warps) {
                    const float inv = 1.0f / num[i * L.ldW + D];
                    float go = 0.0f;
                    for (int dd = lane; dd < D; dd += 32) go += Wm[i * L.ldW + dd] * (num[i * L.ldW + dd] * inv);
                    for (int off = 16; off > 0; off /= 2) go += __shfl_xor_sync(0xffffffffu, go, off);
                    for (int dd = lane; dd < D; dd += 32) Wm[i * L.ldW + dd] = tf32_if<PR>(Wm[i * L.ldW + dd] * inv);
                    if (lane == 0) Wm[i * L.ldW + D] = tf32_if<PR>(-go * inv);
                }
                __syncthreads();  // Wm final; num free
            }
            // dL/dphi(q) is needed for dq and, for the A column of U, by bucket query totals;
            // kernel query totals without dq need only Phi' and Wm (v3 computed it there too).
            if (dq_here || d.bucket) {
                // H' = Wm S^T + mask(Wm [V,1]^T) phi(K): dL/dphi(q) (kernel), or G . B_i[m] (bucket).
                gemm<Into::set, TC, PR>(C, M, Wg, Wm, L.ldW, 1, S, 1, L.ldW, dphq, L.ldM);
                if (d.causal) gemm<Into::set, TC, PR, PR, PR>(C, C, Wg, Wm, L.ldW, 1, V, 1, L.ldW, p2, L.ldC, 8, true);
                const bool bwd_nc = pass == Pass::backward && !d.causal;
                if (bwd_nc) {
                    // Non-causal: U is constant, so the keys' products join this step:
                    // dL/dphi(k_j) = U [v_j, 1] and dv_j = phi(k_j) U[:, :D].
                    gemm<Into::set, TC, PR>(C, M, Wg, V, L.ldW, 1, U, 1, L.ldW, dphk, L.ldM, 8);
                    gemm<Into::set, TC>(C, D, M, phk, L.ldM, 1, U, L.ldW, 1, num, L.ldW);
                }
                __syncthreads();  // dphq, p2 (, dphk, num)
                if (d.causal) block_gemm<Into::add, TC, PR>(C, M, C, p2, L.ldC, 1, phk, L.ldM, 1, dphq, L.ldM);
                if (d.bucket) {
                    // h = r H'; dL/dphi(q) = h / L; Y = Phi' h goes to the A column of U (kept in rr).
                    for (int e = threadIdx.x; e < C * M; e += kBlockThreads) {
                        const int i = e / M, m = e % M;
                        const float hval = rr[i * L.ldM + m] * dphq[i * L.ldM + m];
                        dphq[i * L.ldM + m] = hval * d.inv_tables;
                        rr[i * L.ldM + m] = pht[i * L.ldM + m] * hval;
                    }
                    __syncthreads();  // dphq, rr
                }
            }
        }

        if (keys_only) {
            // v8: dL/dphi(k_j) = U [v_j, 1] and dv_j = phi(k_j) U[:, :D] (as bwd_nc above).
            gemm<Into::set, TC, PR>(C, M, Wg, V, L.ldW, 1, U, 1, L.ldW, dphk, L.ldM, 8);
            gemm<Into::set, TC>(C, D, M, phk, L.ldM, 1, U, L.ldW, 1, num, L.ldW);
            __syncthreads();  // dphk, num
        }

        if (pass == Pass::query_state) {
            // U += Phi'^T Wm beside the causal S update (S was last read by dphq above), and with
            // v8's split the queries' dL/dz (reads uq, phq, dphq).
            gemm<Into::add, TC, false, PR>(M, Wg, C, phe, 1, L.ldM, Wm, L.ldW, 1, U, L.ldW);
            if (d.causal) gemm<Into::add, TC, false, PR>(M, Wg, C, phk, 1, L.ldM, V, L.ldW, 1, S, L.ldW, 4);
            if (dq_here) dbeta += feature_map_backward<PR>(uq, L.ldLP, phq, dphq, L.ldM, dz, C, n, d.L, d.P, d.beta);
            __syncthreads();  // U, S (, dz)
            if (dq_here) {
                // dq = dz Wp into X (free since the queries' feature map).
                gemm<Into::set, TC, PR, PR>(C, D, LP, dz, L.ldLP, 1, Wp, L.ldD, 1, X, L.ldD);
                __syncthreads();  // X
                if (vec) store_rows_vec(a.dq, row0, row_stride, X, L.ldD, D, n, false, false);
                else store_rows(a.dq, row0, row_stride, X, L.ldD, D, n, false);
                __syncthreads();  // X read
            }
            if (d.bucket) {
                // bucket: U[:, D] -= sum_i Y_i.
                for (int m = threadIdx.x; m < M; m += kBlockThreads) {
                    float s = 0.0f;
                    for (int i = 0; i < C; ++i) s += rr[i * L.ldM + m];
                    U[m * L.ldW + D] -= s;
                }
                __syncthreads();  // U
            }
        }

        if (pass == Pass::backward) {
            if (d.causal) {
                if (t0 + C >= seg_end) {
                    // U after the segment's last chunk is the next segment's start state, rounded
                    // once from float64: no subtraction, so rounding left by large early terms stops here.
                    load_state(U, L.ldW, seg + 1 < d.nseg ? a.u_start + bh * d.nseg * a.u_seg_stride + (seg + 1) * a.u_seg_stride
                                                          : a.u_end + bh * state_size, M, W);
                } else {
                    // U after this chunk: the sum over the queries after it.
                    block_gemm<Into::sub, TC, false, PR>(M, Wg, C, phe, 1, L.ldM, Wm, L.ldW, 1, U, L.ldW);
                    if (d.bucket) {
                        for (int m = threadIdx.x; m < M; m += kBlockThreads) {
                            float s = 0.0f;
                            for (int i = 0; i < C; ++i) s += rr[i * L.ldM + m];
                            U[m * L.ldW + D] += s;
                        }
                        __syncthreads();  // U
                    }
                }
                // dL/dphi(k_j) = U(j) [v_j, 1] with U(j) = U_after + the chunk's queries i >= j;
                // dv_j = phi(k_j) U(j)[:, :D].
                gemm<Into::set, TC, PR>(C, M, Wg, V, L.ldW, 1, U, 1, L.ldW, dphk, L.ldM);
                gemm<Into::set, TC>(C, D, M, phk, L.ldM, 1, U, L.ldW, 1, num, L.ldW, 8);
                __syncthreads();  // dphk, num
                gemm<Into::add, TC, PR>(C, M, C, p2, 1, L.ldC, phe, L.ldM, 1, dphk, L.ldM);
                gemm<Into::add, TC, PR, PR>(C, D, C, att, 1, L.ldC, Wm, L.ldW, 1, num, L.ldW, 8);
                __syncthreads();  // dphk, num
                if (d.bucket) {
                    for (int m = threadIdx.x; m < M; m += kBlockThreads) {
                        float s = 0.0f;
                        for (int j = C - 1; j >= 0; --j) {
                            s += rr[j * L.ldM + m];
                            dphk[j * L.ldM + m] -= s;
                        }
                    }
                    __syncthreads();  // dphk
                }
            }
            // dv out; dL/dz of the queries (dz) and of the keys (dz2) on different threads.
            if (vec) store_rows_vec(a.dv, row0, row_stride, num, L.ldW, D, n, false, false);
            else store_rows(a.dv, row0, row_stride, num, L.ldW, D, n, false);
            if (dq_here) dbeta += feature_map_backward<PR>(uq, L.ldLP, phq, dphq, L.ldM, dz, C, n, d.L, d.P, d.beta);
            dbeta += feature_map_backward<PR>(uk, L.ldLP, phk, dphk, L.ldM, dz2, C, n, d.L, d.P, d.beta, C * d.L);
            __syncthreads();  // dz, dz2; num read
            // dq = dz Wp into X, dk = dz2 Wp into num, beside the causal S update (reads phk, V).
            if (dq_here) gemm<Into::set, TC, PR, PR>(C, D, LP, dz, L.ldLP, 1, Wp, L.ldD, 1, X, L.ldD);
            gemm<Into::set, TC, PR, PR>(C, D, LP, dz2, L.ldLP, 1, Wp, L.ldD, 1, num, L.ldW, 8);
            if (d.causal) gemm<Into::add, TC, false, PR>(M, Wg, C, phk, 1, L.ldM, V, L.ldW, 1, S, L.ldW, 0);
            __syncthreads();  // X, num, S
            if (vec) {
                if (dq_here) store_rows_vec(a.dq, row0, row_stride, X, L.ldD, D, n, false, false);
                store_rows_vec(a.dk, row0, row_stride, num, L.ldW, D, n, false, false);
            } else {
                if (dq_here) store_rows(a.dq, row0, row_stride, X, L.ldD, D, n, false);
                store_rows(a.dk, row0, row_stride, num, L.ldW, D, n, false);
            }
            __syncthreads();  // X, num read
        }
    }
    if (pass == Pass::backward || dq_here) {
        // Block sum of dL/dbeta in a fixed order (deterministic); with v8's split the keys' part
        // (backward) adds to the queries' (query totals, which ran first).
        double* red = reinterpret_cast<double*>(smem + L.red);
        red[threadIdx.x] = dbeta;
        __syncthreads();
        if (threadIdx.x == 0) {
            double s = keys_only ? a.dbeta_part[bh * d.nseg + seg] : 0.0;
            for (int i = 0; i < kBlockThreads; ++i) s += red[i];
            a.dbeta_part[bh * d.nseg + seg] = s;
        }
    }

    if (pass == Pass::key_state)
        store_state(a.seg_out + (bh * d.nseg + seg) * state_size, S, L.ldW, M, W);
    if (pass == Pass::query_state)
        store_state(a.seg_out + (bh * d.nseg + seg) * state_size, U, L.ldW, M, W);
}

}  // namespace racesp::cuda
