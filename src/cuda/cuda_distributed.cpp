#include "racesp/cuda_distributed.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "convert.hpp"
#include "cuda_check.hpp"
#include "device_buffer.hpp"
#include "racesp/errors.hpp"

namespace racesp::cuda {

namespace {

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A collective over the group, timed: the device finishes the work before it (so the time is the
// collective's own) and the collective finishes before the next step (it may run on another stream).
template <class F>
void timed_collective(StepTimes& t, F op) {
    CUDA_CHECK(cudaDeviceSynchronize());
    const double t0 = now();
    op();
    CUDA_CHECK(cudaDeviceSynchronize());
    t.collective_s += now() - t0;
}

// Pinned host memory, freed on scope exit.
struct Pinned {
    float* data = nullptr;
    explicit Pinned(std::size_t n) { CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&data), n * sizeof(float))); }
    ~Pinned() { if (data) cudaFreeHost(data); }
    Pinned(const Pinned&) = delete;
    Pinned& operator=(const Pinned&) = delete;
};

// Host float32 <-> device tensor of any dtype, in pieces through one pinned buffer and one
// device float32 buffer.
class Stager {
public:
    explicit Stager(cudaStream_t s) : stream_(s), pinned_(piece), dev_(piece) {}

    void upload(const float* host, const DeviceTensor& t) {
        const std::int64_t n = t.shape.elements();
        for (std::int64_t at = 0; at < n; at += piece) {
            const std::int64_t m = std::min<std::int64_t>(piece, n - at);
            std::memcpy(pinned_.data, host + at, m * sizeof(float));
            CUDA_CHECK(cudaMemcpyAsync(dev_.data(), pinned_.data, m * sizeof(float), cudaMemcpyHostToDevice, stream_));
            convert_from_f32(dev_.data(), static_cast<char*>(t.data) + at * dtype_size(t.dtype), t.dtype, m, stream_);
            CUDA_CHECK(cudaStreamSynchronize(stream_));  // pinned_ is reused
        }
    }
    void download(const DeviceTensor& t, float* host) {
        const std::int64_t n = t.shape.elements();
        for (std::int64_t at = 0; at < n; at += piece) {
            const std::int64_t m = std::min<std::int64_t>(piece, n - at);
            convert_to_f32(static_cast<const char*>(t.data) + at * dtype_size(t.dtype), t.dtype, dev_.data(), m, stream_);
            CUDA_CHECK(cudaMemcpyAsync(pinned_.data, dev_.data(), m * sizeof(float), cudaMemcpyDeviceToHost, stream_));
            CUDA_CHECK(cudaStreamSynchronize(stream_));
            std::memcpy(host + at, pinned_.data, m * sizeof(float));
        }
    }

private:
    static constexpr std::int64_t piece = 16 << 20;  // elements (64 MiB of float32)
    cudaStream_t stream_;
    Pinned pinned_;
    DeviceBuffer<float> dev_;
};

// An owned device tensor.
struct OwnedTensor {
    DeviceBuffer<unsigned char> buf;
    DeviceTensor view;
    OwnedTensor(const Shape& s, DType t) {
        buf.reserve(std::max<std::size_t>(1, s.elements() * dtype_size(t)));
        view = DeviceTensor{buf.data(), s, t};
    }
};

}  // namespace

// ---- device selection ----

int select_local_device(MPI_Comm comm) {
    MPI_Comm local;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) != MPI_SUCCESS)
        throw Error("MPI error in MPI_Comm_split_type");
    int local_rank = 0;
    MPI_Comm_rank(local, &local_rank);
    MPI_Comm_free(&local);
    int devices = 0;
    CUDA_CHECK(cudaGetDeviceCount(&devices));
    if (devices == 0) throw Error("no CUDA device");
    const int device = local_rank % devices;
    CUDA_CHECK(cudaSetDevice(device));
    return device;
}

int select_device_from_environment() {
    int local_rank = 0;
    for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MV2_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK"})
        if (const char* v = std::getenv(name)) {
            local_rank = std::atoi(v);
            break;
        }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        cudaGetLastError();
        throw ConfigError("--device cuda: no CUDA device is visible to this process");
    }
    const int device = local_rank % devices;
    CUDA_CHECK(cudaSetDevice(device));
    return device;
}

// ---- StagedCollectives ----

StagedCollectives::StagedCollectives(Collectives& host) : host_(host) {}
StagedCollectives::~StagedCollectives() {
    if (pinned_) cudaFreeHost(pinned_);
}

template <class F>
void StagedCollectives::staged(double* data, std::int64_t count, F op) {
    if (count > capacity_) {
        if (pinned_) CUDA_CHECK(cudaFreeHost(pinned_));
        pinned_ = nullptr;
        capacity_ = 0;
        CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned_), count * sizeof(double)));
        capacity_ = count;
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(pinned_, data, count * sizeof(double), cudaMemcpyDeviceToHost));
    op(pinned_, count);
    CUDA_CHECK(cudaMemcpy(data, pinned_, count * sizeof(double), cudaMemcpyHostToDevice));
}

void StagedCollectives::allreduce_sum(double* data, std::int64_t count) {
    staged(data, count, [&](double* h, std::int64_t n) { host_.allreduce_sum(h, n); });
}
void StagedCollectives::exscan_sum(double* data, std::int64_t count) {
    staged(data, count, [&](double* h, std::int64_t n) { host_.exscan_sum(h, n); });
}
void StagedCollectives::reverse_exscan_sum(double* data, std::int64_t count) {
    staged(data, count, [&](double* h, std::int64_t n) { host_.reverse_exscan_sum(h, n); });
}

// ---- device-level steps ----

StepTimes device_distributed_forward(Engine& engine, Collectives& sp, const DeviceTensor& q,
                                     const DeviceTensor& k, const DeviceTensor& v, const DeviceTensor& o,
                                     Engine::KeyTotals key_totals) {
    StepTimes t;
    const double t0 = now();
    const bool causal = engine.config().causal;
    engine.forward_step(
        q, k, v, o,
        [&](DeviceState& s) {
            if (causal) timed_collective(t, [&] { sp.exscan_sum(s.data(), s.size()); });
            else timed_collective(t, [&] { sp.allreduce_sum(s.data(), s.size()); });
        },
        key_totals);
    t.compute_s = now() - t0 - t.collective_s;
    return t;
}

StepTimes device_distributed_backward(Engine& engine, Collectives& sp, MPI_Comm world, const DeviceTensor& q,
                                      const DeviceTensor& k, const DeviceTensor& v, const DeviceTensor& o,
                                      const DeviceTensor& dout,
                                      const DeviceTensor& dq, const DeviceTensor& dk, const DeviceTensor& dv,
                                      double& dbeta, Engine::KeyTotals key_totals) {
    StepTimes t;
    const double t0 = now();
    const bool causal = engine.config().causal;
    const double local = engine.backward_step(
        q, k, v, o, dout, dq, dk, dv,
        [&](DeviceState& s) {
            if (causal) timed_collective(t, [&] { sp.exscan_sum(s.data(), s.size()); });
            else timed_collective(t, [&] { sp.allreduce_sum(s.data(), s.size()); });
        },
        [&](DeviceState& u) {
            if (causal) timed_collective(t, [&] { sp.reverse_exscan_sum(u.data(), u.size()); });
            else timed_collective(t, [&] { sp.allreduce_sum(u.data(), u.size()); });
        },
        key_totals);
    const double t1 = now();
    if (MPI_Allreduce(&local, &dbeta, 1, MPI_DOUBLE, MPI_SUM, world) != MPI_SUCCESS)
        throw Error("MPI error in MPI_Allreduce of dbeta");
    t.collective_s += now() - t1;
    t.compute_s = now() - t0 - t.collective_s;
    return t;
}

// ---- host-level entry points ----

StepTimes cuda_distributed_forward(Collectives& sp, const AttentionConfig& config, const Planes& planes,
                                   ConstTensor q, ConstTensor k, ConstTensor v, MutTensor o,
                                   const CudaRunOptions& options) {
    check_shapes(planes, q, k, v);
    const double t0 = now();
    Engine engine(config, planes, options.engine);
    Stager stage(engine.stream());
    const Shape s = q.shape();
    OwnedTensor dq(s, options.dtype), dk(s, options.dtype), dv(s, options.dtype), dout(s, options.dtype);
    stage.upload(q.data(), dq.view);
    stage.upload(k.data(), dk.view);
    stage.upload(v.data(), dv.view);
    StepTimes t = device_distributed_forward(engine, sp, dq.view, dk.view, dv.view, dout.view);
    stage.download(dout.view, o.data());
    t.compute_s = now() - t0 - t.collective_s;
    return t;
}

StepTimes cuda_distributed_backward(Collectives& sp, MPI_Comm world, const AttentionConfig& config,
                                    const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v,
                                    ConstTensor dout, MutTensor dq, MutTensor dk, MutTensor dv, double& dbeta,
                                    const CudaRunOptions& options) {
    check_shapes(planes, q, k, v);
    if (!(dout.shape() == q.shape())) throw ShapeError("dout has shape " + dout.shape().str() + ", expected " + q.shape().str());
    const double t0 = now();
    Engine engine(config, planes, options.engine);
    Stager stage(engine.stream());
    const Shape s = q.shape();
    OwnedTensor tq(s, options.dtype), tk(s, options.dtype), tv(s, options.dtype), tg(s, options.dtype);
    OwnedTensor to(s, options.dtype), gq(s, options.dtype), gk(s, options.dtype), gv(s, options.dtype);
    stage.upload(q.data(), tq.view);
    stage.upload(k.data(), tk.view);
    stage.upload(v.data(), tv.view);
    stage.upload(dout.data(), tg.view);
    // The engine's backward reads the forward's output, which the host-level contract does not
    // pass: the forward runs here first and keeps its key totals for the backward, so the key
    // totals and their collective still run once.
    const StepTimes tf =
        device_distributed_forward(engine, sp, tq.view, tk.view, tv.view, to.view, Engine::KeyTotals::keep);
    StepTimes t = device_distributed_backward(engine, sp, world, tq.view, tk.view, tv.view, to.view, tg.view,
                                              gq.view, gk.view, gv.view, dbeta, Engine::KeyTotals::reuse);
    t.collective_s += tf.collective_s;
    stage.download(gq.view, dq.data());
    stage.download(gk.view, dk.data());
    stage.download(gv.view, dv.data());
    t.compute_s = now() - t0 - t.collective_s;
    return t;
}

}  // namespace racesp::cuda
