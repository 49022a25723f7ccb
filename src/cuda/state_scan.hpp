// Float64 combination of per-segment float32 state totals (DESIGN.md §3): segments accumulate
// in float32 inside, and here their totals are summed or scanned in float64 in token order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace racesp::cuda {

// out[s, e] = sum over segments of seg[s, g, e]  (s: sequence = batch*head, e: state element).
void sum_segments(const float* seg, double* out, std::int64_t sequences, std::int64_t nseg,
                  std::int64_t state_size, cudaStream_t stream);
// In place: seg[s, g] becomes incoming[s] + sum_{g' < g} seg[s, g'] (the state at segment g's start);
// end[s], when given, gets incoming[s] + the sum over every segment (the state after the last).
void exclusive_scan_segments(float* seg, const double* incoming, std::int64_t sequences,
                             std::int64_t nseg, std::int64_t state_size, cudaStream_t stream,
                             float* end = nullptr);
// In place: seg[s, g] becomes incoming[s] + sum_{g' >= g} seg[s, g'] (the backward state at g's start).
void reverse_inclusive_scan_segments(float* seg, const double* incoming, std::int64_t sequences,
                                     std::int64_t nseg, std::int64_t state_size, cudaStream_t stream);
// out = (float) in, count elements.
void state_to_float(const double* in, float* out, std::int64_t count, cudaStream_t stream);
// *out = sum of count values in a fixed order (deterministic), on one block.
void sum_doubles(const double* in, double* out, std::int64_t count, cudaStream_t stream);

}  // namespace racesp::cuda

namespace racesp::cuda {
// One round of the recursive-doubling scan: incl += recv and excl += recv.
void add_received(double* incl, double* excl, const double* recv, std::int64_t count, cudaStream_t stream);
}  // namespace racesp::cuda
