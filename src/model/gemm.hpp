// Row-major matrix products through BLAS (cblas_sgemm / cblas_dgemm): every matrix product of the
// model goes through here, so the BLAS dependency stays in one file.
#pragma once

#include <cstdint>

namespace racesp::model {

// C[m, n] = alpha * op(A) op(B) + beta * C, row-major; op(A) is [m, k], op(B) is [k, n].
// trans_a: A is stored [k, m]; trans_b: B is stored [n, k]. Empty products only scale C.
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          const float* b, float beta, float* c);
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a,
          const double* b, double beta, double* c);

}  // namespace racesp::model
