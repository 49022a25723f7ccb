// Serial HDF5 files (serial_file.hpp).
#include "serial_file.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "output_path.hpp"
#include "racesp/errors.hpp"

namespace racesp::io::detail {

namespace fs = std::filesystem;

Handle open_read_only(const std::string& path, const std::string& what) {
    init_hdf5();
    std::error_code ec;
    fs::file_status st = fs::status(path, ec);
    if (!fs::exists(st)) throw InputError(what + " '" + path + "' does not exist");
    if (fs::is_directory(st)) throw InputError(what + " '" + path + "' is a directory, not a file");
    if (::access(path.c_str(), R_OK) != 0)
        throw InputError(what + " '" + path + "' is not readable: " + std::strerror(errno));
    htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
    hdf5_reason();
    if (is_hdf5 <= 0) throw InputError(what + " '" + path + "' is not an HDF5 file");
    hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    return Handle(check(id, "cannot open " + what + " '" + path + "'"), H5Fclose);
}

SerialOutput::SerialOutput(const std::string& path) : path_(path) {
    init_hdf5();
    std::string problem = create_temporary(path, tmp_);
    if (!problem.empty()) throw InputError(problem);
    file_ = Handle(check(H5Fcreate(tmp_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                         "cannot create '" + path + "'"),
                   H5Fclose);
}

SerialOutput::~SerialOutput() {
    if (committed_) return;
    file_ = Handle();
    std::error_code ec;
    fs::remove(tmp_, ec);
}

void SerialOutput::commit() {
    file_.close("cannot close '" + path_ + "'");
    std::error_code ec;
    fs::rename(tmp_, path_, ec);
    if (ec) throw InputError("cannot rename the finished file to '" + path_ + "': " + ec.message());
    committed_ = true;
}

void write_array(hid_t file, const std::string& name, hid_t file_type, hid_t memory_type, const void* data,
                 std::int64_t count) {
    hsize_t dims[1] = {static_cast<hsize_t>(count)};
    Handle space(check(H5Screate_simple(1, dims, nullptr), "H5Screate_simple"), H5Sclose);
    Handle lcpl(check(H5Pcreate(H5P_LINK_CREATE), "H5Pcreate"), H5Pclose);
    check(H5Pset_create_intermediate_group(lcpl, 1), "H5Pset_create_intermediate_group");
    Handle dcpl(check(H5Pcreate(H5P_DATASET_CREATE), "H5Pcreate"), H5Pclose);
    if (count > (1 << 20)) {
        hsize_t chunk[1] = {1 << 20};
        check(H5Pset_chunk(dcpl, 1, chunk), "H5Pset_chunk");
    }
    Handle dataset(check(H5Dcreate2(file, name.c_str(), file_type, space, lcpl, dcpl, H5P_DEFAULT),
                         "cannot create dataset '" + name + "'"),
                   H5Dclose);
    if (count > 0)
        check(H5Dwrite(dataset, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "cannot write dataset '" + name + "'");
}

namespace {

void write_raw(hid_t object, const std::string& name, hid_t type, hid_t space, const void* value) {
    if (H5Aexists(object, name.c_str()) > 0) check(H5Adelete(object, name.c_str()), "H5Adelete");
    Handle attr(check(H5Acreate2(object, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT),
                      "cannot create attribute '" + name + "'"),
                H5Aclose);
    check(H5Awrite(attr, type, value), "cannot write attribute '" + name + "'");
}

Handle scalar() { return Handle(check(H5Screate(H5S_SCALAR), "H5Screate"), H5Sclose); }

Handle vector_space(std::size_t n) {
    hsize_t dims[1] = {static_cast<hsize_t>(n)};
    return Handle(check(H5Screate_simple(1, dims, nullptr), "H5Screate_simple"), H5Sclose);
}

Handle string_type() {
    Handle type(check(H5Tcopy(H5T_C_S1), "H5Tcopy"), H5Tclose);
    check(H5Tset_size(type, H5T_VARIABLE), "H5Tset_size");
    check(H5Tset_cset(type, H5T_CSET_UTF8), "H5Tset_cset");
    return type;
}

}  // namespace

void write_attribute(hid_t object, const std::string& name, std::int64_t value) {
    write_raw(object, name, H5T_NATIVE_INT64, scalar(), &value);
}

void write_attribute(hid_t object, const std::string& name, double value) {
    write_raw(object, name, H5T_NATIVE_DOUBLE, scalar(), &value);
}

void write_attribute(hid_t object, const std::string& name, const std::string& value) {
    const char* text = value.c_str();
    write_raw(object, name, string_type(), scalar(), &text);
}

void write_attribute(hid_t object, const std::string& name, const std::vector<std::string>& values) {
    std::vector<const char*> texts;
    for (const std::string& v : values) texts.push_back(v.c_str());
    write_raw(object, name, string_type(), vector_space(values.size()), texts.data());
}

void write_attribute(hid_t object, const std::string& name, const std::vector<std::int64_t>& values) {
    write_raw(object, name, H5T_NATIVE_INT64, vector_space(values.size()), values.data());
}

std::optional<std::int64_t> read_int_attribute(hid_t object, const std::string& name) {
    if (H5Aexists(object, name.c_str()) <= 0) {
        hdf5_reason();
        return std::nullopt;
    }
    Handle attr(check(H5Aopen(object, name.c_str(), H5P_DEFAULT), "cannot open attribute '" + name + "'"), H5Aclose);
    Handle space(check(H5Aget_space(attr), "H5Aget_space"), H5Sclose);
    if (H5Sget_simple_extent_npoints(space) != 1) throw InputError("attribute '" + name + "' is not a single value");
    std::int64_t value = 0;
    check(H5Aread(attr, H5T_NATIVE_INT64, &value), "cannot read attribute '" + name + "'");
    return value;
}

std::optional<std::string> read_string_attribute(hid_t object, const std::string& name) {
    if (H5Aexists(object, name.c_str()) <= 0) {
        hdf5_reason();
        return std::nullopt;
    }
    Handle attr(check(H5Aopen(object, name.c_str(), H5P_DEFAULT), "cannot open attribute '" + name + "'"), H5Aclose);
    Handle type = string_type();
    Handle space(check(H5Aget_space(attr), "H5Aget_space"), H5Sclose);
    char* text = nullptr;
    check(H5Aread(attr, type, &text), "cannot read attribute '" + name + "' as a string");
    std::string value = text ? text : "";
    H5Dvlen_reclaim(type, space, H5P_DEFAULT, &text);
    return value;
}

}  // namespace racesp::io::detail
