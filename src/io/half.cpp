// IEEE half precision: conversion both ways, and the half -> float conversion handed to HDF5 so
// that float16 inputs are read at memory speed instead of through HDF5's generic soft path.
#include <cstring>

#include "hdf5_util.hpp"
#include "racesp/io.hpp"

namespace racesp::io {

namespace {

std::uint32_t bits_of(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

float float_of(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

}  // namespace

// Round to nearest even (F. Giesen's float_to_half_fast3_rtne): subnormals through one float
// addition that rounds in hardware, normals by adding the rounding bias to the bits.
std::uint16_t to_half(float value) {
    const std::uint32_t f32_infinity = 255u << 23;
    const std::uint32_t f16_limit = (127u + 16u) << 23;                     // 2^16: Inf from here on
    const std::uint32_t denormal_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    std::uint32_t x = bits_of(value);
    std::uint32_t sign = x & 0x80000000u;
    x ^= sign;
    std::uint32_t out;
    if (x >= f16_limit) {
        out = x > f32_infinity ? 0x7e00u : 0x7c00u;  // NaN stays NaN, the rest overflows to Inf
    } else if (x < (113u << 23)) {                 // below 2^-14: half subnormal or zero
        out = bits_of(float_of(x) + float_of(denormal_magic)) - denormal_magic;
    } else {
        std::uint32_t mantissa_odd = (x >> 13) & 1u;
        x += (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu;
        x += mantissa_odd;
        out = x >> 13;
    }
    return static_cast<std::uint16_t>(out | (sign >> 16));
}

float from_half(std::uint16_t h) {
    std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exponent = (h >> 10) & 0x1fu;
    std::uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0) {
        // Zero or subnormal: mantissa * 2^-24, exact in float.
        return float_of(bits_of(static_cast<float>(mantissa) * (1.0f / 16777216.0f)) | sign);
    }
    if (exponent == 31) return float_of(sign | 0x7f800000u | (mantissa << 13));
    return float_of(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

namespace detail {

namespace {

// HDF5 conversion callback: converts in place, from packed 2-byte halves to 4-byte floats
// (walking backwards so no half is overwritten before it is read), or with a common stride.
herr_t half_to_float(hid_t /*src*/, hid_t /*dst*/, H5T_cdata_t* cdata, size_t count, size_t buf_stride,
                     size_t /*bkg_stride*/, void* buf, void* /*bkg*/, hid_t /*dxpl*/) {
    switch (cdata->command) {
        case H5T_CONV_INIT:
            cdata->need_bkg = H5T_BKG_NO;
            return 0;
        case H5T_CONV_FREE:
            return 0;
        case H5T_CONV_CONV: {
            auto* bytes = static_cast<unsigned char*>(buf);
            std::size_t src_step = buf_stride ? buf_stride : 2;
            std::size_t dst_step = buf_stride ? buf_stride : 4;
            for (std::size_t i = count; i-- > 0;) {
                std::uint16_t h;
                std::memcpy(&h, bytes + i * src_step, 2);
                float f = from_half(h);
                std::memcpy(bytes + i * dst_step, &f, 4);
            }
            return 0;
        }
        default:
            return -1;
    }
}

}  // namespace

void register_half_conversion() {
    Handle half = file_type(ElementType::float16);
    check(H5Tregister(H5T_PERS_HARD, "racesp_half_to_float", half, H5T_NATIVE_FLOAT, half_to_float),
          "H5Tregister");
}

}  // namespace detail

}  // namespace racesp::io
