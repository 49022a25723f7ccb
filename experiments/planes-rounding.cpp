// The float64 reference (tests/cuda/reference64.cpp) with the projection planes rounded to bf16
// (7 bits kept after the leading one) or TF32 (10) against exact planes, on the
// inputs of CudaVsReference's non-causal kernel-normalisation cases: how far dL/dbeta, o and the
// gradients move when nothing but the planes is rounded (gpu-notes.md, v27). CPU only:
//   g++ -std=c++20 -O2 -fopenmp -Iinclude -Itests/cuda experiments/planes-rounding.cpp \
//       tests/cuda/reference64.cpp <build>/src/core/libracesp_core.a -o /tmp/planes-rounding
//   /tmp/planes-rounding 5 64     # tokens, head dimension
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include "racesp/planes.hpp"
#include "reference64.hpp"
using namespace racesp;
// x rounded to nearest even, keeping `keep` bits of mantissa.
static float rnd(float x, int keep) {
    unsigned u; std::memcpy(&u, &x, 4);
    const int drop = 23 - keep;
    unsigned lsb = (u >> drop) & 1u, bias = (1u << (drop - 1)) - 1 + lsb;
    u = (u + bias) & ~((1u << drop) - 1);
    float y; std::memcpy(&y, &u, 4); return y;
}
static std::vector<float> rv(size_t n, uint64_t seed, float s = 1.0f) {
    std::mt19937_64 gen(seed); std::normal_distribution<float> d(0.0f, s);
    std::vector<float> x(n); for (auto& e : x) e = d(gen); return x;
}
int main(int argc, char** argv) {
    const int64_t T = argc > 1 ? atoi(argv[1]) : 5, D = argc > 2 ? atoi(argv[2]) : 64, B = 2, H = 2;
    AttentionConfig cfg; cfg.planes = 4; cfg.tables = 4; cfg.beta = 1.5; cfg.causal = false;
    cfg.normalization = Normalization::kernel; cfg.seed = 7;
    Planes planes(cfg, H, D);
    const uint64_t seed = 1000 + D * 31 + 4 * 7 + 4;
    size_t n = B * T * H * D; float s = 1.0f / std::sqrt((float)D);
    auto q = rv(n, seed + 1, s), k = rv(n, seed + 2, s), v = rv(n, seed + 3), g = rv(n, seed + 4);
    for (auto* x : {&q, &k, &v, &g}) for (auto& e : *x) e = rnd(e, 7);
    auto run = [&](int keep) {
        testref::Problem p{B, T, H, D, {}, {}, {}, {}, {}};
        p.q.assign(q.begin(), q.end()); p.k.assign(k.begin(), k.end());
        p.v.assign(v.begin(), v.end()); p.dout.assign(g.begin(), g.end());
        for (float w : planes.values()) p.planes.push_back(keep < 23 ? rnd(w, keep) : w);
        return testref::reference(cfg, p, true);
    };
    auto e = run(23), b = run(7), t = run(10);  // exact, bf16, TF32
    auto rel = [](const std::vector<double>& a, const std::vector<double>& r) {
        double num = 0, den = 0; for (size_t i = 0; i < a.size(); ++i) { num += (a[i]-r[i])*(a[i]-r[i]); den += r[i]*r[i]; }
        return std::sqrt(num / den); };
    printf("T=%ld D=%ld dbeta exact %.6f | planes bf16: dbeta %.6f (rel %.2e) o %.2e dq %.2e dk %.2e | planes tf32: dbeta rel %.2e o %.2e dq %.2e\n",
           (long)T, (long)D, e.dbeta, b.dbeta, std::abs(b.dbeta - e.dbeta) / std::abs(e.dbeta), rel(b.o, e.o), rel(b.dq, e.dq), rel(b.dk, e.dk),
           std::abs(t.dbeta - e.dbeta) / std::abs(e.dbeta), rel(t.o, e.o), rel(t.dq, e.dq));
}
