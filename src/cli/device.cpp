// Device dispatch (device.hpp).
#include "device.hpp"

#include <string>

#include "racesp/errors.hpp"
#ifdef RACESP_HAVE_CUDA
#include "racesp/cuda_distributed.hpp"
#endif

namespace racesp::cli {

Device parse_device(std::string_view name) {
    if (name == "cpu") return Device::cpu;
    if (name == "cuda") return Device::cuda;
    throw ConfigError("device must be 'cpu' or 'cuda', got '" + std::string(name) + "'");
}

std::string_view to_string(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

void require_device(Device device) {
#ifdef RACESP_HAVE_CUDA
    if (device == Device::cuda) cuda::select_device_from_environment();  // one GPU per rank of a node
#else
    if (device == Device::cuda)
        throw ConfigError("--device cuda: this racesp was built without the CUDA backend (use --device cpu)");
#endif
}

StepTimes run_forward(Device device, Collectives& sp, const AttentionConfig& config, const Planes& planes,
                      ConstTensor q, ConstTensor k, ConstTensor v, MutTensor o) {
    switch (device) {
        case Device::cpu: return distributed_forward(sp, config, planes, q, k, v, o);
        case Device::cuda:
#ifdef RACESP_HAVE_CUDA
        {
            // States cross ranks through the host collectives, staged from device memory.
            cuda::StagedCollectives device_sp(sp);
            return cuda::cuda_distributed_forward(device_sp, config, planes, q, k, v, o);
        }
#endif
            break;
    }
    require_device(device);
    return {};
}

StepTimes run_backward(Device device, Collectives& sp, MPI_Comm world, const AttentionConfig& config,
                       const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v, ConstTensor dout,
                       MutTensor dq, MutTensor dk, MutTensor dv, double& dbeta) {
    switch (device) {
        case Device::cpu: return distributed_backward(sp, world, config, planes, q, k, v, dout, dq, dk, dv, dbeta);
        case Device::cuda:
#ifdef RACESP_HAVE_CUDA
        {
            cuda::StagedCollectives device_sp(sp);
            return cuda::cuda_distributed_backward(device_sp, world, config, planes, q, k, v, dout, dq, dk, dv, dbeta);
        }
#endif
            break;
    }
    require_device(device);
    return {};
}

}  // namespace racesp::cli
