// Sums of float64 buffers across the ranks of one group: the only communication RACE attention
// needs (DESIGN.md §3). Implemented over MPI (host buffers) and over NCCL (device buffers).
#pragma once

#include <cstdint>

namespace racesp {

class Collectives {
public:
    virtual ~Collectives() = default;

    virtual int rank() const = 0;
    virtual int size() const = 0;

    // In place: every rank gets the sum over all ranks.
    virtual void allreduce_sum(double* data, std::int64_t count) = 0;
    // In place: rank r gets the sum over ranks 0..r-1 (zeros on rank 0).
    virtual void exscan_sum(double* data, std::int64_t count) = 0;
    // In place: rank r gets the sum over ranks r+1..size-1 (zeros on the last rank).
    virtual void reverse_exscan_sum(double* data, std::int64_t count) = 0;
};

}  // namespace racesp
