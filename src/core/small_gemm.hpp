// Dense float32 products of the small matrices one block of tokens produces (a few dozen rows,
// at most a few thousand columns), row-major, register-tiled so the inner loops vectorise.
#pragma once

#include <cstdint>

namespace racesp::core {

// C[m x n] = A[m x k] * B[k x n]  (or C += ... when accumulate). Leading dimensions in elements.
void gemm(std::int64_t m, std::int64_t n, std::int64_t k, const float* A, std::int64_t lda, const float* B,
          std::int64_t ldb, float* C, std::int64_t ldc, bool accumulate);

// out[cols x rows] = in[rows x cols]^T.
void transpose(std::int64_t rows, std::int64_t cols, const float* in, std::int64_t ld_in, float* out,
               std::int64_t ld_out);

}  // namespace racesp::core
