// A non-owning view of a row-major [B, T, H, D] tensor (batch, tokens, heads, head dim).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace racesp {

struct Shape {
    std::int64_t batch = 0, tokens = 0, heads = 0, dim = 0;

    std::int64_t elements() const { return batch * tokens * heads * dim; }
    bool operator==(const Shape&) const = default;
    std::string str() const;  // "[B, T, H, D]"
};

template <class T>
class TensorView {
public:
    TensorView() = default;
    TensorView(T* data, Shape shape) : data_(data), shape_(shape) {}
    // A view of mutable data is also a view of const data.
    template <class U>
    TensorView(const TensorView<U>& other) : data_(other.data()), shape_(other.shape()) {}

    T* data() const { return data_; }
    const Shape& shape() const { return shape_; }
    std::int64_t row_stride() const { return shape_.heads * shape_.dim; }  // between tokens

    // The D-vector of batch entry b, token t, head h.
    T* row(std::int64_t b, std::int64_t t, std::int64_t h) const {
        return data_ + ((b * shape_.tokens + t) * shape_.heads + h) * shape_.dim;
    }

private:
    T* data_ = nullptr;
    Shape shape_;
};

using ConstTensor = TensorView<const float>;
using MutTensor = TensorView<float>;

}  // namespace racesp
