// An owned, growable device allocation (cudaMalloc; never managed memory).
#pragma once

#include <cstddef>

#include "cuda_check.hpp"

namespace racesp::cuda {

template <class T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t count) { reserve(count); }
    ~DeviceBuffer() { if (data_) cudaFree(data_); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    // Makes room for at least `count` elements; old contents are dropped when it grows.
    void reserve(std::size_t count) {
        if (count <= capacity_) return;
        if (data_) CUDA_CHECK(cudaFree(data_));
        data_ = nullptr;
        capacity_ = 0;
        CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)));
        capacity_ = count;
    }
    T* data() const { return data_; }
    std::size_t capacity() const { return capacity_; }
    std::size_t bytes() const { return capacity_ * sizeof(T); }

private:
    T* data_ = nullptr;
    std::size_t capacity_ = 0;
};

}  // namespace racesp::cuda
