// Device dispatch (device.hpp).
#include "device.hpp"

#include <string>

#include "racesp/errors.hpp"

namespace racesp::cli {

Device parse_device(std::string_view name) {
    if (name == "cpu") return Device::cpu;
    if (name == "cuda") return Device::cuda;
    throw ConfigError("device must be 'cpu' or 'cuda', got '" + std::string(name) + "'");
}

std::string_view to_string(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

void require_device(Device device) {
    if (device == Device::cuda)
        throw ConfigError("--device cuda: this racesp was built without the CUDA backend (use --device cpu)");
}

StepTimes run_forward(Device device, Collectives& sp, const AttentionConfig& config, const Planes& planes,
                      ConstTensor q, ConstTensor k, ConstTensor v, MutTensor o) {
    switch (device) {
        case Device::cpu: return distributed_forward(sp, config, planes, q, k, v, o);
        case Device::cuda: break;
    }
    require_device(device);
    return {};
}

StepTimes run_backward(Device device, Collectives& sp, MPI_Comm world, const AttentionConfig& config,
                       const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v, ConstTensor dout,
                       MutTensor dq, MutTensor dk, MutTensor dv, double& dbeta) {
    switch (device) {
        case Device::cpu: return distributed_backward(sp, world, config, planes, q, k, v, dout, dq, dk, dv, dbeta);
        case Device::cuda: break;
    }
    require_device(device);
    return {};
}

}  // namespace racesp::cli
