// v53 (experiments/gpu-notes.md): Hopper's warpgroup matrix products (wgmma, sm_90a) for the
// state sums and products of the causal sweeps (v53 the forward's, v55 the backward's updates). Four warps (a warpgroup, warps 4h .. 4h + 3 of the block)
// issue one wgmma.mma_async.m64nNk16 together: D (64 x N, float32, in registers) += A (64 x 16)
// B (16 x N). Each warp holds rows 16 (warp % 4) .. + 15 of D in mma.sync's C-fragment order
// (n-tile i: d[4i .. 4i + 3]) and, where A comes from registers, the same rows of A in
// mma.sync's m16n8k16 A-fragment order (PTX ISA, "Register Fragments" of wgmma).
//
// Operands in shared memory are read through a descriptor (PTX ISA, "Matrix Descriptor Format")
// in the layout without swizzling: 8 x 8 blocks of bf16, each 128 contiguous bytes (8 rows of 16
// bytes). Blocked<C> is that layout for a matrix of C columns with the blocks of a row group
// (8 rows) next to each other; its contiguous dimension is the column, so it is MN-major where
// the columns are M or N ("transposed", imm-trans 1), K-major where they are K. ldmatrix reads
// one block per 8 lanes' row addresses, so the mma.sync code reads the same tiles.
//
// Shared memory written by ordinary stores must be fenced for the async proxy (proxy_fence, by the
// writing threads, before the barrier that precedes the wgmma); accumulators and A registers are
// fenced before a batch (fence), and the batch is waited for (commit_and_wait) before the
// registers are read or the operands overwritten.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

// Device code for sm_90 without the "a" has no wgmma: say so at build time, in one line.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "RaceSP's CUDA kernels use wgmma: build for sm_90a (CMAKE_CUDA_ARCHITECTURES=90a)"
#endif

namespace racesp::cuda::wgmma {

template <int C>
struct Blocked {
    static_assert(C % 8 == 0, "whole 8 x 8 blocks");
    static constexpr int kRowGroupBytes = 16 * C;  // 8 rows of C bf16
    static constexpr int kBlockBytes = 128;
    // The element offset of (row, column).
    __host__ __device__ static constexpr int at(int row, int col) {
        return (row / 8) * 8 * C + (col / 8) * 64 + (row % 8) * 8 + col % 8;
    }
};

// The descriptor of the operand whose first block is at `base` (shared memory, 16-byte
// aligned): `k_group_bytes` between blocks along K (the leading dimension byte offset),
// `mn_group_bytes` along M or N (the stride dimension byte offset), no swizzling.
__device__ __forceinline__ std::uint64_t descriptor(const void* base, std::uint32_t k_group_bytes,
                                                    std::uint32_t mn_group_bytes) {
    const auto addr = static_cast<std::uint32_t>(__cvta_generic_to_shared(base));
    return static_cast<std::uint64_t>((addr & 0x3FFFF) >> 4) |
           static_cast<std::uint64_t>((k_group_bytes >> 4) & 0x3FFF) << 16 |
           static_cast<std::uint64_t>((mn_group_bytes >> 4) & 0x3FFF) << 32;
}

__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Before a batch of wgmma: orders the registers' earlier writes (and reads) before it.
template <int R>
__device__ __forceinline__ void fence(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}

// Ends a batch and waits for it; the accumulators are not read before this (the empty asm
// statements tie them to the wait, so the compiler cannot move their reads above it).
template <int R>
__device__ __forceinline__ void commit_and_wait(float (&d)[R]) {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d += a b for m64nNk16, bf16 operands, float32 accumulators (N / 2 per thread): a from registers
// or by descriptor (kTransA 1: M-major), b by descriptor (kTransB 1: N-major). Only the N the
// kernels use are written out (D = 128: D + 8 = 136 columns and half of 144; D = 64: 72 and half
// of 80; 64 keys): each form names all N / 2 accumulators in one instruction.
template <int N>
struct RegsTimesShared;
template <int N>
struct SharedTimesShared;

template <>
struct RegsTimesShared<136> {
    template <int kTransB>
    __device__ __forceinline__ static void run(float (&d)[68], const std::uint32_t (&a)[4], std::uint64_t b) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %73, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n136k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67}, "
            "{%68, %69, %70, %71}, %72, p, 1, 1, %74;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
              "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
              "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1), "n"(kTransB));
    }
};
template <>
struct RegsTimesShared<72> {
    template <int kTransB>
    __device__ __forceinline__ static void run(float (&d)[36], const std::uint32_t (&a)[4], std::uint64_t b) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %41, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35}, "
            "{%36, %37, %38, %39}, %40, p, 1, 1, %42;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1), "n"(kTransB));
    }
};

template <>
struct RegsTimesShared<64> {
    template <int kTransB>
    __device__ __forceinline__ static void run(float (&d)[32], const std::uint32_t (&a)[4], std::uint64_t b) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
            "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1), "n"(kTransB));
    }
};

// v74: the projection's form, m64n32k16, with the 16-bit type of the rows (bf16 or fp16) as
// the operands' type.
template <>
struct RegsTimesShared<32> {
    template <int kTransB, class Op>
    __device__ __forceinline__ static void run(float (&d)[16], const std::uint32_t (&a)[4], std::uint64_t b) {
        if constexpr (std::is_same<Op, __half>::value)
            asm volatile(
                "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
                "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                "{%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n"
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1), "n"(kTransB));
        else
            asm volatile(
                "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
                "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                "{%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n"
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1), "n"(kTransB));
    }
};

template <>
struct SharedTimesShared<72> {
    template <int kTransA, int kTransB>
    __device__ __forceinline__ static void run(float (&d)[36], std::uint64_t a, std::uint64_t b) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35}, "
            "%36, %37, p, 1, 1, %39, %40;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
            : "l"(a), "l"(b), "r"(1), "n"(kTransA), "n"(kTransB));
    }
};
template <>
struct SharedTimesShared<40> {
    template <int kTransA, int kTransB>
    __device__ __forceinline__ static void run(float (&d)[20], std::uint64_t a, std::uint64_t b) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %22, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n40k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19}, "
            "%20, %21, p, 1, 1, %23, %24;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19])
            : "l"(a), "l"(b), "r"(1), "n"(kTransA), "n"(kTransB));
    }
};

}  // namespace racesp::cuda::wgmma
