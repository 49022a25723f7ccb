// Reading [B, T, H, D] tensors: collective opening, validation of what the file holds, and
// block-wise collective hyperslab reads with a check for NaN and Inf (io.hpp).
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "hdf5_util.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"
#include "racesp/io.hpp"

namespace racesp::io {

using detail::agreed;
using detail::check;
using detail::Handle;

namespace {

// Bytes of float32 per rank moved by one collective read: large enough for the file system,
// small enough that the transfer stays well under MPI-IO's 2 GiB limits.
constexpr std::int64_t read_block_bytes = 64 << 20;
constexpr std::size_t conversion_buffer_bytes = 8 << 20;

// Why `path` cannot be read as an input, in one line; empty when it can. Rank 0 only.
std::string input_problem(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::file_status st = fs::status(path, ec);
    if (ec && ec != std::errc::no_such_file_or_directory)
        return "cannot access input '" + path + "': " + ec.message();
    if (!fs::exists(st)) return "input file '" + path + "' does not exist";
    if (fs::is_directory(st)) return "input '" + path + "' is a directory, not a file";
    if (::access(path.c_str(), R_OK) != 0)
        return "input file '" + path + "' is not readable: " + std::strerror(errno);
    htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
    detail::hdf5_reason();  // clear the stack
    if (is_hdf5 <= 0) return "input file '" + path + "' is not an HDF5 file";
    return "";
}


std::string class_name(H5T_class_t c) {
    switch (c) {
        case H5T_INTEGER: return "an integer";
        case H5T_STRING: return "a string";
        case H5T_COMPOUND: return "a compound";
        case H5T_ENUM: return "an enum";
        case H5T_ARRAY: return "an array";
        case H5T_VLEN: return "a variable-length";
        case H5T_OPAQUE: return "an opaque";
        case H5T_BITFIELD: return "a bitfield";
        case H5T_REFERENCE: return "a reference";
        default: return "a non-float";
    }
}

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* data) {
    auto* names = static_cast<std::vector<std::string>*>(data);
    names->push_back(name);
    return names->size() < 12 ? 0 : 1;  // a few are enough for a hint
}

// "q, k, v" : what the root group holds, for the missing-dataset message.
std::string root_names(hid_t file) {
    std::vector<std::string> names;
    H5Literate(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names);
    detail::hdf5_reason();
    std::string out;
    for (std::size_t i = 0; i < names.size() && i < 10; ++i) out += (i ? ", " : "") + names[i];
    if (names.size() > 10) out += ", ...";
    return out;
}

// Whether every link along `name` exists (H5Lexists fails on a missing intermediate group).
bool link_exists(hid_t file, const std::string& name) {
    std::string prefix;
    std::size_t start = 0;
    while (start <= name.size()) {
        std::size_t slash = name.find('/', start);
        std::string part = name.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
        if (!part.empty()) {
            prefix += (prefix.empty() ? "" : "/") + part;
            htri_t e = H5Lexists(file, prefix.c_str(), H5P_DEFAULT);
            if (e <= 0) {
                detail::hdf5_reason();
                return false;
            }
        }
        if (slash == std::string::npos) break;
        start = slash + 1;
    }
    return !prefix.empty();
}

// Index of the first value that is NaN or +-Inf (exponent bits all ones), or -1. Checks in
// vectorisable strips and looks closer only when a strip holds one.
std::int64_t first_nonfinite(const float* p, std::int64_t n) {
    constexpr std::int64_t strip = 1024;
    for (std::int64_t s = 0; s < n; s += strip) {
        std::int64_t e = std::min(n, s + strip);
        std::uint32_t bad = 0;
        for (std::int64_t i = s; i < e; ++i) {
            std::uint32_t u;
            std::memcpy(&u, p + i, 4);
            bad |= static_cast<std::uint32_t>((u & 0x7f800000u) == 0x7f800000u);
        }
        if (bad) {
            for (std::int64_t i = s; i < e; ++i) {
                std::uint32_t u;
                std::memcpy(&u, p + i, 4);
                if ((u & 0x7f800000u) == 0x7f800000u) return i;
            }
        }
    }
    return -1;
}

}  // namespace

InputFile::InputFile(MPI_Comm comm, const std::string& path) : comm_(comm), path_(path) {
    detail::init_hdf5();
    std::string problem;
    if (comm_rank(comm) == 0) problem = input_problem(path);
    check_all(comm, problem.empty(), problem);
    agreed(comm, [&] {
        Handle fapl = detail::mpio_file_access(comm);
        file_ = check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), "cannot open input '" + path + "'");
    });
}

InputFile::~InputFile() {
    // Not while unwinding: H5Fclose is collective under MPI-IO (io.hpp).
    if (file_ >= 0 && std::uncaught_exceptions() == 0) H5Fclose(file_);
}

void InputFile::close() {
    if (file_ < 0) return;
    hid_t f = file_;
    file_ = -1;
    agreed(comm_, [&] { check(H5Fclose(f), "cannot close input '" + path_ + "'"); });
}

bool InputFile::contains(const std::string& name) const {
    bool found = false;
    agreed(comm_, [&] {
        found = false;
        if (!link_exists(file_, name)) return;
        Handle obj(check(H5Oopen(file_, name.c_str(), H5P_DEFAULT), "cannot open '" + name + "'"), H5Oclose);
        found = H5Iget_type(obj) == H5I_DATASET;
    });
    return found;
}

TensorInfo InputFile::inspect(const std::string& name) const {
    TensorInfo info;
    info.name = name;
    agreed(comm_, [&] {
        const std::string where = "dataset '" + name + "' in '" + path_ + "'";
        if (!link_exists(file_, name)) {
            std::string have = root_names(file_);
            throw InputError("input '" + path_ + "' has no dataset '" + name + "'" +
                             (have.empty() ? " (it is empty)" : " (it has: " + have + ")"));
        }
        Handle obj(check(H5Oopen(file_, name.c_str(), H5P_DEFAULT), "cannot open '" + name + "'"), H5Oclose);
        if (H5Iget_type(obj) != H5I_DATASET)
            throw InputError("'" + name + "' in '" + path_ + "' is a group, not a dataset");
        Handle space(check(H5Dget_space(obj), "cannot read the shape of " + where), H5Sclose);
        int rank = H5Sget_simple_extent_ndims(space);
        hsize_t dims[H5S_MAX_RANK];
        if (rank > 0) H5Sget_simple_extent_dims(space, dims, nullptr);
        std::string shape = "[";
        for (int i = 0; i < rank; ++i) shape += (i ? ", " : "") + std::to_string(dims[i]);
        shape += "]";
        if (rank != 4)
            throw InputError(where + " has " + std::to_string(std::max(rank, 0)) + " dimensions " + shape +
                             "; expected 4: [batch, tokens, heads, dim]");
        for (int i = 0; i < 4; ++i)
            if (dims[i] == 0) throw InputError(where + " has shape " + shape + "; every extent must be at least 1");
        info.shape = {static_cast<std::int64_t>(dims[0]), static_cast<std::int64_t>(dims[1]),
                      static_cast<std::int64_t>(dims[2]), static_cast<std::int64_t>(dims[3])};
        Handle type(check(H5Dget_type(obj), "cannot read the type of " + where), H5Tclose);
        H5T_class_t c = H5Tget_class(type);
        if (c != H5T_FLOAT)
            throw InputError(where + " has " + class_name(c) + " type; expected float16, float32 or float64");
        info.type = detail::classify_float(type);
    });
    return info;
}

void InputFile::read(const TensorInfo& tensor, const Slab& slab, float* dst, const ProgressFn& progress) const {
    const Shape& g = tensor.shape;
    const std::int64_t nb = slab.batch.size(), nt = slab.tokens.size();
    const std::int64_t row = g.heads * g.dim;
    const std::int64_t block = block_tokens(g, nb, read_block_bytes);
    const std::int64_t blocks = detail::collective_block_count(comm_, nb > 0 ? nt : 0, block);

    Handle dataset, space, dxpl;
    agreed(comm_, [&] {
        dataset = Handle(check(H5Dopen2(file_, tensor.name.c_str(), H5P_DEFAULT), "cannot open " + tensor.name),
                         H5Dclose, true);
        space = Handle(check(H5Dget_space(dataset), "H5Dget_space"), H5Sclose);
        dxpl = detail::collective_transfer(conversion_buffer_bytes);
    });

    float unused = 0;
    float* buffer = dst ? dst : &unused;  // HDF5 wants a pointer even for an empty selection
    std::int64_t first_bad = std::numeric_limits<std::int64_t>::max();  // global linear index
    for (std::int64_t i = 0; i < blocks; ++i) {
        TokenRange part{std::min(slab.tokens.begin + i * block, slab.tokens.end),
                        std::min(slab.tokens.begin + (i + 1) * block, slab.tokens.end)};
        Slab piece{nb > 0 ? slab.batch : TokenRange{}, part};
        agreed(comm_, [&] {
            Handle fsel = detail::file_selection(space, piece);
            Handle msel = detail::memory_selection(g, piece, nt, part.begin - slab.tokens.begin);
            check(H5Dread(dataset, H5T_NATIVE_FLOAT, msel, fsel, dxpl, buffer),
                  "cannot read dataset '" + tensor.name + "' of '" + path_ + "'");
        });
        for (std::int64_t b = 0; b < nb && part.size() > 0; ++b) {
            const float* p = dst + (b * nt + (part.begin - slab.tokens.begin)) * row;
            std::int64_t at = first_nonfinite(p, part.size() * row);
            if (at >= 0) first_bad = std::min(first_bad, ((slab.batch.begin + b) * g.tokens + part.begin) * row + at);
        }
        if (progress) progress(std::min(g.batch * g.tokens, (i + 1) * (g.batch * g.tokens) / blocks),
                               g.batch * g.tokens);
    }
    dataset.close("cannot close dataset '" + tensor.name + "'");

    std::int64_t global_bad = 0;
    MPI_Allreduce(&first_bad, &global_bad, 1, MPI_INT64_T, MPI_MIN, comm_);
    if (global_bad != std::numeric_limits<std::int64_t>::max()) {
        std::int64_t d = global_bad % g.dim, h = global_bad / g.dim % g.heads;
        std::int64_t t = global_bad / row % g.tokens, b = global_bad / row / g.tokens;
        std::string what = tensor.type == ElementType::float64 || tensor.type == ElementType::other_float
                               ? "a non-finite value (NaN, Inf, or beyond the float32 range)"
                               : "a non-finite value (NaN or Inf)";
        check_all(comm_, false,
                  "dataset '" + tensor.name + "' in '" + path_ + "' has " + what + " at [b, t, h, d] = [" +
                      std::to_string(b) + ", " + std::to_string(t) + ", " + std::to_string(h) + ", " +
                      std::to_string(d) + "]");
    }
}

}  // namespace racesp::io
