// Synthetic inputs for `generate` and `bench`: standard normal values that are a pure function of
// (seed, stream, element index), so any number of ranks, in any block order, produce the same
// tensor. Streams: 1 q, 2 k, 3 v, 4 do.
#pragma once

#include <cstdint>

#include "racesp/io.hpp"
#include "racesp/tensor.hpp"

namespace racesp::cli {

enum Stream : std::uint64_t { stream_q = 1, stream_k = 2, stream_v = 3, stream_do = 4 };

// Elements [first, first + count) of the flattened tensor, into out[0 .. count).
void fill_normal(std::uint64_t seed, std::uint64_t stream, std::int64_t first, std::int64_t count, float* out);

// A rank's slab of a [B, T, H, D] tensor ([nb, nt, H, D] row-major), in the given memory type
// (float32, float64, or float16 bits as std::uint16_t). OpenMP over the slab.
void fill_slab(std::uint64_t seed, std::uint64_t stream, const Shape& global, const io::Slab& slab,
               io::ElementType type, void* out);

}  // namespace racesp::cli
