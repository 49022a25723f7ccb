// Checkpoint files (checkpoint.hpp).
#include "checkpoint.hpp"

#include "hdf5_util.hpp"
#include "racesp/errors.hpp"
#include "serial_file.hpp"

namespace racesp::io {

using detail::check;
using detail::Handle;

void write_checkpoint(const std::string& path, const Checkpoint& c) {
    detail::SerialOutput out(path);
    for (const auto& [name, values] : c.arrays)
        detail::write_array(out.file(), name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, values.data(),
                            static_cast<std::int64_t>(values.size()));
    for (const auto& [name, value] : c.integers) detail::write_attribute(out.file(), name, value);
    for (const auto& [name, value] : c.texts) detail::write_attribute(out.file(), name, value);
    detail::write_attribute(out.file(), "racesp_version", std::string(RACESP_VERSION));
    out.commit();
}

CheckpointReader::CheckpointReader(const std::string& path)
    : path_(path), file_(std::make_unique<Handle>(detail::open_read_only(path, "checkpoint"))) {}

CheckpointReader::~CheckpointReader() = default;

std::vector<float> CheckpointReader::array(const std::string& name, std::int64_t expected) const {
    const std::string where = "checkpoint '" + path_ + "'";
    htri_t exists = H5Lexists(file_->get(), name.substr(0, name.find('/')).c_str(), H5P_DEFAULT);
    if (exists > 0) exists = H5Lexists(file_->get(), name.c_str(), H5P_DEFAULT);
    detail::hdf5_reason();
    if (exists <= 0) throw InputError(where + " has no dataset '" + name + "' (not a checkpoint of this model)");
    Handle dataset(check(H5Dopen2(file_->get(), name.c_str(), H5P_DEFAULT), where + ": cannot open '" + name + "'"),
                   H5Dclose);
    Handle space(check(H5Dget_space(dataset), "H5Dget_space"), H5Sclose);
    const hssize_t n = H5Sget_simple_extent_npoints(space);
    if (n != expected)
        throw InputError(where + ": dataset '" + name + "' has " + std::to_string(n) + " values; this model needs " +
                         std::to_string(expected));
    std::vector<float> values(static_cast<std::size_t>(n));
    if (n > 0)
        check(H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
              where + ": cannot read '" + name + "'");
    return values;
}

std::int64_t CheckpointReader::integer(const std::string& name) const {
    std::optional<std::int64_t> v = detail::read_int_attribute(file_->get(), name);
    if (!v) throw InputError("checkpoint '" + path_ + "' has no attribute '" + name + "'");
    return *v;
}

std::string CheckpointReader::text(const std::string& name) const {
    std::optional<std::string> v = detail::read_string_attribute(file_->get(), name);
    if (!v) throw InputError("checkpoint '" + path_ + "' has no attribute '" + name + "'");
    return *v;
}

}  // namespace racesp::io
