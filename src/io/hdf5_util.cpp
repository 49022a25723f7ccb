// HDF5 helpers: error reporting, property lists, types and selections (hdf5_util.hpp).
#include "hdf5_util.hpp"

#include <algorithm>
#include <mutex>
#include <string>

#include "racesp/errors.hpp"

namespace racesp::io::detail {

void init_hdf5() {
    static std::once_flag once;
    std::call_once(once, [] {
        H5open();
        H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
        register_half_conversion();
    });
}

namespace {

herr_t deepest(unsigned /*n*/, const H5E_error2_t* err, void* data) {
    // Walked from the API call down to the cause: the last description is the most specific.
    if (err->desc && err->desc[0]) *static_cast<std::string*>(data) = err->desc;
    return 0;
}

}  // namespace

std::string hdf5_reason() {
    std::string reason;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, deepest, &reason);
    H5Eclear2(H5E_DEFAULT);
    return reason;
}

hid_t check(hid_t status, const std::string& what) {
    if (status < 0) {
        std::string reason = hdf5_reason();
        throw InputError(reason.empty() ? what : what + ": " + reason);
    }
    return status;
}

void Handle::close(const std::string& what) {
    if (id_ < 0) return;
    hid_t id = id_;
    id_ = -1;
    check(close_(id), what);
}

Handle mpio_file_access(MPI_Comm comm) {
    Handle fapl(check(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate"), H5Pclose);
    check(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL), "H5Pset_fapl_mpio");
    // Metadata is read by one rank and broadcast, and written collectively: every rank makes
    // the same metadata calls, and thousands of ranks do not all hit the file system.
    check(H5Pset_all_coll_metadata_ops(fapl, true), "H5Pset_all_coll_metadata_ops");
    check(H5Pset_coll_metadata_write(fapl, true), "H5Pset_coll_metadata_write");
    // Closing the file closes whatever is still open in it.
    check(H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG), "H5Pset_fclose_degree");
    return fapl;
}

Handle collective_transfer(std::size_t conversion_bytes) {
    Handle dxpl(check(H5Pcreate(H5P_DATASET_XFER), "H5Pcreate"), H5Pclose);
    check(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE), "H5Pset_dxpl_mpio");
    check(H5Pset_buffer(dxpl, conversion_bytes, nullptr, nullptr), "H5Pset_buffer");
    return dxpl;
}

namespace {

// IEEE half, little endian: sign bit 15, exponent bits 10..14 (bias 15), mantissa bits 0..9,
// built the way h5py builds numpy's float16 so that files from either compare equal.
hid_t make_half_type() {
    hid_t t = check(H5Tcopy(H5T_IEEE_F32LE), "H5Tcopy");
    check(H5Tset_fields(t, 15, 10, 5, 0, 10), "H5Tset_fields");
    check(H5Tset_size(t, 2), "H5Tset_size");
    check(H5Tset_ebias(t, 15), "H5Tset_ebias");
    return t;
}

}  // namespace

Handle file_type(ElementType type) {
    switch (type) {
        case ElementType::float16: return Handle(make_half_type(), H5Tclose);
        case ElementType::float32: return Handle(check(H5Tcopy(H5T_IEEE_F32LE), "H5Tcopy"), H5Tclose);
        case ElementType::float64: return Handle(check(H5Tcopy(H5T_IEEE_F64LE), "H5Tcopy"), H5Tclose);
        case ElementType::other_float: break;
    }
    throw InputError("no file type for element type " + std::string(to_string(type)));
}

Handle memory_type(ElementType type) {
    switch (type) {
        case ElementType::float16: return Handle(make_half_type(), H5Tclose);
        case ElementType::float32: return Handle(check(H5Tcopy(H5T_NATIVE_FLOAT), "H5Tcopy"), H5Tclose);
        case ElementType::float64: return Handle(check(H5Tcopy(H5T_NATIVE_DOUBLE), "H5Tcopy"), H5Tclose);
        case ElementType::other_float: break;
    }
    throw InputError("no memory type for element type " + std::string(to_string(type)));
}

ElementType classify_float(hid_t type) {
    std::size_t size = H5Tget_size(type);
    std::size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
    H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
    if (size == 2 && esize == 5 && msize == 10 && H5Tget_ebias(type) == 15) return ElementType::float16;
    if (size == 4 && esize == 8 && msize == 23) return ElementType::float32;
    if (size == 8 && esize == 11 && msize == 52) return ElementType::float64;
    return ElementType::other_float;
}

Handle file_selection(hid_t dataset_space, const Slab& slab) {
    Handle space(check(H5Scopy(dataset_space), "H5Scopy"), H5Sclose);
    hsize_t dims[4] = {0, 0, 0, 0};
    H5Sget_simple_extent_dims(space, dims, nullptr);
    if (slab.batch.size() <= 0 || slab.tokens.size() <= 0) {
        check(H5Sselect_none(space), "H5Sselect_none");
        return space;
    }
    hsize_t start[4] = {static_cast<hsize_t>(slab.batch.begin), static_cast<hsize_t>(slab.tokens.begin), 0, 0};
    hsize_t count[4] = {static_cast<hsize_t>(slab.batch.size()), static_cast<hsize_t>(slab.tokens.size()), dims[2],
                        dims[3]};
    check(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr), "H5Sselect_hyperslab");
    return space;
}

Handle memory_selection(const Shape& global, const Slab& slab, std::int64_t nt_buffer, std::int64_t offset) {
    if (slab.batch.size() <= 0 || slab.tokens.size() <= 0) {
        hsize_t one = 1;
        Handle space(check(H5Screate_simple(1, &one, nullptr), "H5Screate_simple"), H5Sclose);
        check(H5Sselect_none(space), "H5Sselect_none");
        return space;
    }
    hsize_t dims[4] = {static_cast<hsize_t>(slab.batch.size()), static_cast<hsize_t>(nt_buffer),
                       static_cast<hsize_t>(global.heads), static_cast<hsize_t>(global.dim)};
    Handle space(check(H5Screate_simple(4, dims, nullptr), "H5Screate_simple"), H5Sclose);
    hsize_t start[4] = {0, static_cast<hsize_t>(offset), 0, 0};
    hsize_t count[4] = {dims[0], static_cast<hsize_t>(slab.tokens.size()), dims[2], dims[3]};
    check(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr), "H5Sselect_hyperslab");
    return space;
}

std::int64_t collective_block_count(MPI_Comm comm, std::int64_t tokens, std::int64_t block) {
    std::int64_t mine = tokens > 0 ? (tokens + block - 1) / block : 0;
    std::int64_t most = 0;
    MPI_Allreduce(&mine, &most, 1, MPI_INT64_T, MPI_MAX, comm);
    return most;
}

}  // namespace racesp::io::detail

namespace racesp::io {

std::string_view to_string(ElementType type) {
    switch (type) {
        case ElementType::float16: return "float16";
        case ElementType::float32: return "float32";
        case ElementType::float64: return "float64";
        case ElementType::other_float: return "non-IEEE float";
    }
    return "?";
}

ElementType parse_element_type(std::string_view name) {
    if (name == "float16") return ElementType::float16;
    if (name == "float32") return ElementType::float32;
    if (name == "float64") return ElementType::float64;
    throw ConfigError("dtype must be float32, float16 or float64, got '" + std::string(name) + "'");
}

std::int64_t block_tokens(const Shape& shape, std::int64_t batch_entries, std::int64_t target_bytes) {
    std::int64_t per_token = std::max<std::int64_t>(1, batch_entries) * shape.heads * shape.dim * 4;
    return std::max<std::int64_t>(1, target_bytes / std::max<std::int64_t>(1, per_token));
}

}  // namespace racesp::io
