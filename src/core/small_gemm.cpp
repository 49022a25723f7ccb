#include "small_gemm.hpp"

#include <algorithm>
#include <vector>

namespace racesp::core {

namespace {

constexpr std::int64_t kRows = 8;   // rows of C per tile
constexpr std::int64_t kWide = 32;  // columns of C per tile: 8 x 32 accumulators fit 16 AVX-512 registers
constexpr std::int64_t kNarrow = 16;

// One ROWS x COLS tile of C, of which the first `store_cols` columns are written back. Constant
// bounds let the compiler keep `acc` in registers.
template <std::int64_t ROWS, std::int64_t kCols>
void tile(std::int64_t k, const float* A, std::int64_t lda, const float* B, std::int64_t ldb, float* C,
          std::int64_t ldc, bool accumulate, std::int64_t store_cols) {
    float acc[ROWS][kCols] = {};
    if (accumulate)
        for (std::int64_t r = 0; r < ROWS; ++r)
            for (std::int64_t j = 0; j < store_cols; ++j) acc[r][j] = C[r * ldc + j];
    for (std::int64_t p = 0; p < k; ++p) {
        const float* b = B + p * ldb;
        for (std::int64_t r = 0; r < ROWS; ++r) {
            const float a = A[r * lda + p];
#pragma omp simd
            for (std::int64_t j = 0; j < kCols; ++j) acc[r][j] += a * b[j];
        }
    }
    for (std::int64_t r = 0; r < ROWS; ++r)
        for (std::int64_t j = 0; j < store_cols; ++j) C[r * ldc + j] = acc[r][j];
}

// All rows of C for one column strip of B (COLS wide, row stride ldb).
template <std::int64_t COLS>
void strip(std::int64_t m, std::int64_t k, const float* A, std::int64_t lda, const float* B, std::int64_t ldb,
           float* C, std::int64_t ldc, bool accumulate, std::int64_t store_cols) {
    std::int64_t i = 0;
    for (; i + kRows <= m; i += kRows)
        tile<kRows, COLS>(k, A + i * lda, lda, B, ldb, C + i * ldc, ldc, accumulate, store_cols);
    for (; i < m; ++i) tile<1, COLS>(k, A + i * lda, lda, B, ldb, C + i * ldc, ldc, accumulate, store_cols);
}

}  // namespace

void gemm(std::int64_t m, std::int64_t n, std::int64_t k, const float* A, std::int64_t lda, const float* B,
          std::int64_t ldb, float* C, std::int64_t ldc, bool accumulate) {
    std::int64_t j = 0;
    for (; j + kWide <= n; j += kWide) strip<kWide>(m, k, A, lda, B + j, ldb, C + j, ldc, accumulate, kWide);
    for (; j + kNarrow <= n; j += kNarrow)
        strip<kNarrow>(m, k, A, lda, B + j, ldb, C + j, ldc, accumulate, kNarrow);
    if (j < n) {
        // The last few columns of B are copied into a zero-padded strip, so they run on the same
        // register tiles (a lone count column would otherwise run scalar).
        const std::int64_t cols = n - j;
        thread_local std::vector<float> padded;
        padded.assign(static_cast<std::size_t>(k * kNarrow), 0.0f);
        for (std::int64_t p = 0; p < k; ++p) std::copy_n(B + p * ldb + j, cols, &padded[p * kNarrow]);
        strip<kNarrow>(m, k, A, lda, padded.data(), kNarrow, C + j, ldc, accumulate, cols);
    }
}

void transpose(std::int64_t rows, std::int64_t cols, const float* in, std::int64_t ld_in, float* out,
               std::int64_t ld_out) {
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) out[c * ld_out + r] = in[r * ld_in + c];
}

}  // namespace racesp::core
