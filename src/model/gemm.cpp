// BLAS matrix products (gemm.hpp).
#include "gemm.hpp"

#include <cblas.h>

namespace racesp::model {

namespace {

template <class T>
bool trivial(std::int64_t m, std::int64_t n, std::int64_t k, T beta, T* c) {
    if (m > 0 && n > 0 && k > 0) return false;
    // BLAS would scale C by beta; with k == 0 there is nothing else to do.
    if (m > 0 && n > 0 && beta != T(1))
        for (std::int64_t i = 0; i < m * n; ++i) c[i] = beta == T(0) ? T(0) : c[i] * beta;
    return true;
}

}  // namespace

void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          const float* b, float beta, float* c) {
    if (trivial(m, n, k, beta, c)) return;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
                static_cast<int>(trans_a ? m : k), b, static_cast<int>(trans_b ? k : n), beta, c, static_cast<int>(n));
}

void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a,
          const double* b, double beta, double* c) {
    if (trivial(m, n, k, beta, c)) return;
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
                static_cast<int>(trans_a ? m : k), b, static_cast<int>(trans_b ? k : n), beta, c, static_cast<int>(n));
}

}  // namespace racesp::model
