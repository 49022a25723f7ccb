// Every CUDA runtime call goes through CUDA_CHECK: a failure becomes a racesp::Error whose
// message names the call, the CUDA error and where it was made.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "racesp/errors.hpp"

namespace racesp::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
    throw Error(std::string("CUDA error in ") + call + ": " + cudaGetErrorString(err) + " (" + file +
                ":" + std::to_string(line) + ")");
}

}  // namespace racesp::cuda

#define CUDA_CHECK(call)                                                                \
    do {                                                                                \
        const cudaError_t racesp_err_ = (call);                                         \
        if (racesp_err_ != cudaSuccess)                                                 \
            ::racesp::cuda::throw_cuda(racesp_err_, #call, __FILE__, __LINE__);         \
    } while (0)

// After a kernel launch: launch-configuration errors surface here, faults at the next sync.
#define CUDA_CHECK_LAUNCH(name) CUDA_CHECK(cudaPeekAtLastError())
