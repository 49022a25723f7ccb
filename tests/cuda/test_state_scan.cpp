// The float64 combination of per-segment float32 totals (src/cuda/state_scan.hpp) against the
// same sums walked one segment at a time on the host. The kernels take the segments in batches
// but keep the order of the float64 additions, so the results must be bit-identical; segment
// counts below, at and above one batch (16) and over several batches cover the partial batches
// at either end of the walk.
#include <gtest/gtest.h>

#include <vector>

#include "gpu_test_util.hpp"
#include "state_scan.hpp"

namespace racesp {
namespace {

using testgpu::random_vector;

template <class T>
struct DeviceArray {
    T* p = nullptr;
    explicit DeviceArray(const std::vector<T>& host) {
        GPU_CHECK(cudaMalloc(&p, host.size() * sizeof(T)));
        GPU_CHECK(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
    ~DeviceArray() { cudaFree(p); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    std::vector<T> download(std::size_t n) const {
        std::vector<T> host(n);
        GPU_CHECK(cudaMemcpy(host.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }
};

TEST(StateScan, EqualsSequentialFloat64) {
    SKIP_WITHOUT_GPU();
    const int seqs = 3, size = 70;
    for (int nseg : {1, 15, 16, 37, 100}) {
        SCOPED_TRACE("nseg " + std::to_string(nseg));
        const std::size_t n = static_cast<std::size_t>(seqs) * nseg * size;
        const std::vector<float> seg = random_vector(n, 11 + nseg);
        std::vector<double> incoming(static_cast<std::size_t>(seqs) * size);
        const std::vector<float> inc32 = random_vector(incoming.size(), 7, 100.0f);
        for (std::size_t i = 0; i < incoming.size(); ++i) incoming[i] = inc32[i] + 1e-9 * static_cast<double>(i);
        auto at = [&](int s, int g, int e) { return (static_cast<std::size_t>(s) * nseg + g) * size + e; };

        DeviceArray<float> dsum(seg), dexcl(seg), drev(seg), dend(std::vector<float>(incoming.size()));
        DeviceArray<double> dinc(incoming), dout(std::vector<double>(incoming.size()));
        cuda::sum_segments(dsum.p, dout.p, seqs, nseg, size, nullptr);
        cuda::exclusive_scan_segments(dexcl.p, dinc.p, seqs, nseg, size, nullptr, dend.p);
        cuda::reverse_inclusive_scan_segments(drev.p, dinc.p, seqs, nseg, size, nullptr);
        GPU_CHECK(cudaDeviceSynchronize());
        const std::vector<double> sum = dout.download(incoming.size());
        const std::vector<float> end = dend.download(incoming.size()), excl = dexcl.download(n), rev = drev.download(n);

        int mismatches = 0;
        for (int s = 0; s < seqs; ++s)
            for (int e = 0; e < size; ++e) {
                const std::size_t i = static_cast<std::size_t>(s) * size + e;
                double total = 0.0, fwd = incoming[i], bwd = incoming[i];
                for (int g = 0; g < nseg; ++g) {
                    total += seg[at(s, g, e)];
                    mismatches += excl[at(s, g, e)] != static_cast<float>(fwd);
                    fwd += seg[at(s, g, e)];
                }
                for (int g = nseg - 1; g >= 0; --g) {
                    bwd += seg[at(s, g, e)];
                    mismatches += rev[at(s, g, e)] != static_cast<float>(bwd);
                }
                mismatches += sum[i] != total;
                mismatches += end[i] != static_cast<float>(fwd);
            }
        EXPECT_EQ(mismatches, 0);
    }
}

}  // namespace
}  // namespace racesp
