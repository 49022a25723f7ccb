// Device dispatch (device.hpp).
#include "device.hpp"

#include <string>

#include "racesp/errors.hpp"
#ifdef RACESP_HAVE_CUDA
#include "cuda_trainer.hpp"
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

void TrainDevice::validate() const {
    if (precision != "bf16" && precision != "fp32")
        throw ConfigError("--precision must be 'bf16' or 'fp32', got '" + precision + "'");
    if (recompute && device != Device::cuda) throw ConfigError("--recompute applies to --device cuda only");
}

std::string TrainDevice::describe() const {
    if (device == Device::cpu) return "cpu";
    std::string text = "cuda " + precision;
#ifdef RACESP_HAVE_CUDA
    text += std::string(", ") + model::gpu::cuda_collectives_name();
#endif
    if (recompute) text += ", recompute";
    return text;
}

std::unique_ptr<model::Trainer> make_trainer(const TrainDevice& where, const model::ModelConfig& model,
                                             const model::OptimizerConfig& optimizer, MPI_Comm world, MPI_Comm sp) {
    if (where.device == Device::cpu) return model::make_cpu_trainer(model, optimizer, world, sp);
#ifdef RACESP_HAVE_CUDA
    model::gpu::CudaModelOptions options;
    options.dtype = where.precision == "fp32" ? cuda::DType::f32 : cuda::DType::bf16;
    options.recompute = where.recompute;
    return model::gpu::make_cuda_trainer(model, optimizer, options, world, sp);
#else
    require_device(where.device);  // the one-line "built without the CUDA backend" error
    return nullptr;
#endif
}

}  // namespace racesp::cli
