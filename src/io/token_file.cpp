// Token files (token_file.hpp).
#include "token_file.hpp"

#include "hdf5_util.hpp"
#include "racesp/errors.hpp"
#include "serial_file.hpp"

namespace racesp::io {

using detail::check;
using detail::Handle;

TokenFile::TokenFile(const std::string& path)
    : path_(path), file_(std::make_unique<Handle>(detail::open_read_only(path, "token file"))) {}

TokenFile::~TokenFile() = default;

bool TokenFile::contains(const std::string& name) const {
    htri_t exists = H5Lexists(file_->get(), name.c_str(), H5P_DEFAULT);
    detail::hdf5_reason();
    return exists > 0;
}

TokenStream TokenFile::inspect(const std::string& name) const {
    if (!contains(name))
        throw InputError("token file '" + path_ + "' has no dataset '" + name + "' (write one with racesp prep)");
    Handle dataset(check(H5Dopen2(file_->get(), name.c_str(), H5P_DEFAULT), "cannot open dataset '" + name + "'"), H5Dclose);
    Handle space(check(H5Dget_space(dataset), "H5Dget_space"), H5Sclose);
    Handle type(check(H5Dget_type(dataset), "H5Dget_type"), H5Tclose);
    const std::string where = "dataset '" + name + "' in token file '" + path_ + "'";
    if (H5Sget_simple_extent_ndims(space) != 1)
        throw InputError(where + " has " + std::to_string(H5Sget_simple_extent_ndims(space)) +
                         " dimensions; expected a 1-D stream of token ids");
    const std::size_t size = H5Tget_size(type);
    const bool unsigned_int = H5Tget_class(type) == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE;
    if (!unsigned_int || (size != 1 && size != 2)) {
        std::string kind = H5Tget_class(type) == H5T_FLOAT ? "float" + std::to_string(8 * size)
                           : H5Tget_class(type) == H5T_INTEGER
                               ? std::string(H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(8 * size)
                               : "a non-integer type";
        throw InputError(where + " has type " + kind + "; expected uint8 or uint16 token ids");
    }
    hsize_t dims[1] = {0};
    H5Sget_simple_extent_dims(space, dims, nullptr);
    return {name, static_cast<std::int64_t>(dims[0]), static_cast<int>(size)};
}

std::int64_t TokenFile::vocab(const TokenStream& stream) const {
    std::optional<std::int64_t> v = detail::read_int_attribute(file_->get(), "vocab_size");
    const std::int64_t most = stream.bytes == 1 ? 256 : 65536;
    if (!v) return most;
    if (*v < 2 || *v > most)
        throw InputError("token file '" + path_ + "': attribute vocab_size " + std::to_string(*v) +
                         " does not fit its " + (stream.bytes == 1 ? "uint8" : "uint16") + " tokens");
    return *v;
}

void TokenFile::read(const TokenStream& stream, std::int64_t begin, std::int64_t count, std::int32_t* dst) const {
    if (count <= 0) return;
    Handle dataset(check(H5Dopen2(file_->get(), stream.name.c_str(), H5P_DEFAULT), "cannot open dataset '" + stream.name + "'"),
                   H5Dclose);
    Handle space(check(H5Dget_space(dataset), "H5Dget_space"), H5Sclose);
    hsize_t start[1] = {static_cast<hsize_t>(begin)}, n[1] = {static_cast<hsize_t>(count)};
    check(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, n, nullptr), "H5Sselect_hyperslab");
    Handle memory(check(H5Screate_simple(1, n, nullptr), "H5Screate_simple"), H5Sclose);
    check(H5Dread(dataset, H5T_NATIVE_INT32, memory, space, H5P_DEFAULT, dst),
          "cannot read tokens " + std::to_string(begin) + ".." + std::to_string(begin + count) + " of '" +
              stream.name + "' in '" + path_ + "'");
}

void write_token_file(const std::string& path, const TokenFileContents& c) {
    detail::SerialOutput out(path);
    detail::write_array(out.file(), "tokens", H5T_STD_U8LE, H5T_NATIVE_UINT8, c.tokens.data(),
                        static_cast<std::int64_t>(c.tokens.size()));
    detail::write_array(out.file(), "val_tokens", H5T_STD_U8LE, H5T_NATIVE_UINT8, c.val_tokens.data(),
                        static_cast<std::int64_t>(c.val_tokens.size()));
    if (!c.val_scored.empty())
        detail::write_array(out.file(), "val_scored", H5T_STD_U8LE, H5T_NATIVE_UINT8, c.val_scored.data(),
                            static_cast<std::int64_t>(c.val_scored.size()));
    detail::write_attribute(out.file(), "vocab_size", std::int64_t{256});
    detail::write_attribute(out.file(), "tokens", static_cast<std::int64_t>(c.tokens.size()));
    detail::write_attribute(out.file(), "val_tokens", static_cast<std::int64_t>(c.val_tokens.size()));
    detail::write_attribute(out.file(), "val_fraction", c.val_fraction);
    detail::write_attribute(out.file(), "sources", c.sources);
    detail::write_attribute(out.file(), "source_bytes", c.source_bytes);
    detail::write_attribute(out.file(), "racesp_version", std::string(RACESP_VERSION));
    out.commit();
}

}  // namespace racesp::io
