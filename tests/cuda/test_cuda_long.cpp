// A 16M-token causal forward on one GPU: the last token's output matches a float64 computation
// from the same data (every key's features and the explicit state sum in float64, OpenMP).
#include <gtest/gtest.h>
#include <omp.h>

#include "gpu_test_util.hpp"
#include "racesp/planes.hpp"
#include "reference64.hpp"

namespace racesp {
namespace {

// Deterministic values in [-scale, scale) from a hash of the index, filled in parallel.
void fill(std::vector<float>& x, std::uint64_t seed, float scale) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(x.size()); ++i) {
        std::uint64_t z = seed * 0x9e3779b97f4a7c15ULL + static_cast<std::uint64_t>(i);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        x[i] = (static_cast<float>(z >> 40) / static_cast<float>(1 << 24) * 2.0f - 1.0f) * scale;
    }
}

TEST(CudaLong, Causal16MTokensLastOutputMatchesFloat64) {
    SKIP_WITHOUT_GPU();
    for (auto norm : {Normalization::kernel, Normalization::bucket}) {
        AttentionConfig cfg;
        cfg.planes = 4;
        cfg.tables = 4;
        cfg.causal = true;
        cfg.normalization = norm;
        const std::int64_t T = 16LL << 20, H = 1, D = 32;
        const Shape s{1, T, H, D};
        const Planes planes(cfg, H, D);
        std::vector<float> q(s.elements()), k(s.elements()), v(s.elements());
        fill(q, 1, 0.3f);
        fill(k, 2, 0.3f);
        fill(v, 3, 1.0f);
        cuda::Engine engine(cfg, planes);
        testgpu::GpuTensor tq(s, cuda::DType::f32), tk(s, cuda::DType::f32), tv(s, cuda::DType::f32),
            to(s, cuda::DType::f32);
        tq.upload(q);
        tk.upload(k);
        tv.upload(v);
        to.poison();
        engine.attention_forward(tq.view(), tk.view(), tv.view(), to.view());
        std::vector<float> last(D);
        GPU_CHECK(cudaMemcpy(last.data(), static_cast<float*>(to.view().data) + (T - 1) * H * D, D * sizeof(float),
                             cudaMemcpyDeviceToHost));
        const auto want = testref::reference_one_output(cfg, T, H, D, q.data(), k.data(), v.data(),
                                                        planes.values().data(), 0, T - 1);
        const double err = testgpu::rel_error(last, want);
        std::printf("  16M causal %s: last-token relative error %.3e\n", std::string(to_string(norm)).c_str(), err);
        EXPECT_LT(err, 1e-5);
    }
}

}  // namespace
}  // namespace racesp
