#include "cuda_check.hpp"
#include "state_scan.hpp"

namespace racesp::cuda {

namespace {

constexpr int threads = 256;

int blocks_for(std::int64_t n) { return static_cast<int>((n + threads - 1) / threads); }

// One thread per (sequence, element); it walks the segments in order, kBatch segments at a time:
// the batch's loads go out together before any of its stores (a scan's store to one segment would
// otherwise hold the next segment's load back, one memory latency per segment: ~10 ms of a causal
// step at 8M tokens, 8192 segments). The float64 sums keep their order.
constexpr int kBatch = 16;

__global__ void sum_segments_kernel(const float* seg, double* out, long long sequences,
                                    long long nseg, long long size) {
    const long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (idx >= sequences * size) return;
    const long long s = idx / size, e = idx % size;
    const float* p = seg + s * nseg * size + e;
    double acc = 0.0;
    for (long long g0 = 0; g0 < nseg; g0 += kBatch) {
        float x[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j) x[j] = g0 + j < nseg ? p[(g0 + j) * size] : 0.0f;
#pragma unroll
        for (int j = 0; j < kBatch; ++j) acc += x[j];
    }
    out[idx] = acc;
}

__global__ void exclusive_scan_kernel(float* seg, const double* incoming, float* end, long long sequences,
                                      long long nseg, long long size) {
    const long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (idx >= sequences * size) return;
    const long long s = idx / size, e = idx % size;
    float* p = seg + s * nseg * size + e;
    double acc = incoming[idx];
    for (long long g0 = 0; g0 < nseg; g0 += kBatch) {
        const int n = static_cast<int>(nseg - g0 < kBatch ? nseg - g0 : kBatch);
        float x[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j) x[j] = j < n ? p[(g0 + j) * size] : 0.0f;
#pragma unroll
        for (int j = 0; j < kBatch; ++j)
            if (j < n) {
                p[(g0 + j) * size] = static_cast<float>(acc);
                acc += x[j];
            }
    }
    if (end) end[idx] = static_cast<float>(acc);
}

__global__ void reverse_inclusive_scan_kernel(float* seg, const double* incoming, long long sequences,
                                              long long nseg, long long size) {
    const long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (idx >= sequences * size) return;
    const long long s = idx / size, e = idx % size;
    float* p = seg + s * nseg * size + e;
    double acc = incoming[idx];
    for (long long g1 = nseg; g1 > 0; g1 -= kBatch) {  // segments [g1 - n, g1), from the end
        const int n = static_cast<int>(g1 < kBatch ? g1 : kBatch);
        float x[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j) x[j] = j < n ? p[(g1 - 1 - j) * size] : 0.0f;
#pragma unroll
        for (int j = 0; j < kBatch; ++j)
            if (j < n) {
                acc += x[j];
                p[(g1 - 1 - j) * size] = static_cast<float>(acc);
            }
    }
}

__global__ void to_float_kernel(const double* in, float* out, long long count) {
    const long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (idx < count) out[idx] = static_cast<float>(in[idx]);
}

__global__ void sum_doubles_kernel(const double* in, double* out, long long count) {
    __shared__ double part[threads];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < count; i += threads) acc += in[i];
    part[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int i = 0; i < threads; ++i) s += part[i];
        *out = s;
    }
}

}  // namespace

void sum_segments(const float* seg, double* out, std::int64_t sequences, std::int64_t nseg,
                  std::int64_t state_size, cudaStream_t stream) {
    const std::int64_t n = sequences * state_size;
    if (n == 0) return;
    if (nseg == 0) {
        CUDA_CHECK(cudaMemsetAsync(out, 0, n * sizeof(double), stream));
        return;
    }
    sum_segments_kernel<<<blocks_for(n), threads, 0, stream>>>(seg, out, sequences, nseg, state_size);
    CUDA_CHECK_LAUNCH(sum_segments_kernel);
}

void exclusive_scan_segments(float* seg, const double* incoming, std::int64_t sequences,
                             std::int64_t nseg, std::int64_t state_size, cudaStream_t stream, float* end) {
    const std::int64_t n = sequences * state_size;
    if (n == 0 || nseg == 0) return;
    exclusive_scan_kernel<<<blocks_for(n), threads, 0, stream>>>(seg, incoming, end, sequences, nseg, state_size);
    CUDA_CHECK_LAUNCH(exclusive_scan_kernel);
}

void reverse_inclusive_scan_segments(float* seg, const double* incoming, std::int64_t sequences,
                                     std::int64_t nseg, std::int64_t state_size, cudaStream_t stream) {
    const std::int64_t n = sequences * state_size;
    if (n == 0 || nseg == 0) return;
    reverse_inclusive_scan_kernel<<<blocks_for(n), threads, 0, stream>>>(seg, incoming, sequences, nseg,
                                                                         state_size);
    CUDA_CHECK_LAUNCH(reverse_inclusive_scan_kernel);
}

void state_to_float(const double* in, float* out, std::int64_t count, cudaStream_t stream) {
    if (count == 0) return;
    to_float_kernel<<<blocks_for(count), threads, 0, stream>>>(in, out, count);
    CUDA_CHECK_LAUNCH(to_float_kernel);
}

void sum_doubles(const double* in, double* out, std::int64_t count, cudaStream_t stream) {
    sum_doubles_kernel<<<1, threads, 0, stream>>>(in, out, count);
    CUDA_CHECK_LAUNCH(sum_doubles_kernel);
}

}  // namespace racesp::cuda

namespace racesp::cuda {

namespace {
__global__ void add_received_kernel(double* incl, double* excl, const double* recv, long long count) {
    const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
    if (i < count) {
        incl[i] += recv[i];
        excl[i] += recv[i];
    }
}
}  // namespace

void add_received(double* incl, double* excl, const double* recv, std::int64_t count, cudaStream_t stream) {
    if (count == 0) return;
    add_received_kernel<<<blocks_for(count), threads, 0, stream>>>(incl, excl, recv, count);
    CUDA_CHECK_LAUNCH(add_received_kernel);
}

}  // namespace racesp::cuda
