// Writing result files: a hidden temporary file written collectively in blocks, renamed to its
// final name by rank 0 once every rank has closed it (io.hpp).
#include <algorithm>
#include <filesystem>
#include <string>

#include "hdf5_util.hpp"
#include "output_path.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"
#include "racesp/io.hpp"

namespace racesp::io {

using detail::agreed;
using detail::check;
using detail::Handle;

namespace {

constexpr std::int64_t write_block_bytes = 64 << 20;   // float32 per rank per collective write
constexpr std::int64_t chunk_bytes = 4 << 20;          // target size of one chunk in the file
constexpr std::size_t conversion_buffer_bytes = 8 << 20;


std::size_t element_size(ElementType type) {
    return type == ElementType::float16 ? 2 : type == ElementType::float64 ? 8 : 4;
}

}  // namespace

void check_output_path(MPI_Comm comm, const std::string& output, const std::vector<std::string>& inputs,
                       bool overwrite) {
    std::string problem;
    if (comm_rank(comm) == 0) problem = detail::output_problem(output, inputs, overwrite);
    check_all(comm, problem.empty(), problem);
}

OutputFile::OutputFile(MPI_Comm comm, const std::string& path, bool overwrite) : comm_(comm), path_(path) {
    detail::init_hdf5();
    std::string problem;
    if (comm_rank(comm) == 0) {
        problem = detail::output_problem(path, {}, overwrite);
        if (problem.empty()) problem = detail::create_temporary(path, tmp_path_);
    }
    check_all(comm, problem.empty(), problem);

    int length = static_cast<int>(tmp_path_.size());
    MPI_Bcast(&length, 1, MPI_INT, 0, comm);
    tmp_path_.resize(static_cast<std::size_t>(length));
    MPI_Bcast(tmp_path_.data(), length, MPI_CHAR, 0, comm);
    try {
        agreed(comm, [&] {
            Handle fapl = detail::mpio_file_access(comm);
            file_ = check(H5Fcreate(tmp_path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl),
                          "cannot create output '" + path + "'");
        });
    } catch (...) {
        // The destructor does not run for an object whose constructor threw.
        if (comm_rank(comm) == 0) {
            std::error_code ec;
            std::filesystem::remove(tmp_path_, ec);
        }
        throw;
    }
}

OutputFile::~OutputFile() {
    if (committed_) return;
    if (std::uncaught_exceptions() == 0) {
        // Every rank is here on the normal path: a collective close is safe.
        for (Tensor& t : tensors_) H5Dclose(t.id);
        if (file_ >= 0) H5Fclose(file_);
    }
    // No collective call while unwinding; each rank removes the name (the first one wins), so
    // that no partial file is left even when this rank alone failed and the job is aborted.
    std::error_code ec;
    std::filesystem::remove(tmp_path_, ec);
}

const OutputFile::Tensor& OutputFile::tensor(const std::string& name) const {
    for (const Tensor& t : tensors_)
        if (t.name == name) return t;
    throw InputError("no dataset '" + name + "' was created in '" + path_ + "'");
}

void OutputFile::create_tensor(const std::string& name, const Shape& shape, ElementType type) {
    agreed(comm_, [&] {
        hsize_t dims[4] = {static_cast<hsize_t>(shape.batch), static_cast<hsize_t>(shape.tokens),
                           static_cast<hsize_t>(shape.heads), static_cast<hsize_t>(shape.dim)};
        std::int64_t row = shape.heads * shape.dim;
        if (row * static_cast<std::int64_t>(element_size(type)) > (std::int64_t{1} << 32) - 1)
            throw InputError("one token of '" + name + "' " + shape.str() + " exceeds HDF5's 4 GiB chunk limit");
        // Chunks of whole tokens of one batch entry, about chunk_bytes each: a rank's token range
        // maps onto few chunks, and the index stays small for 10^8 tokens.
        hsize_t chunk_tokens = static_cast<hsize_t>(std::clamp<std::int64_t>(
            chunk_bytes / (row * static_cast<std::int64_t>(element_size(type))), 1, shape.tokens));
        hsize_t chunk[4] = {1, chunk_tokens, dims[2], dims[3]};
        Handle space(check(H5Screate_simple(4, dims, nullptr), "H5Screate_simple"), H5Sclose);
        Handle dcpl(check(H5Pcreate(H5P_DATASET_CREATE), "H5Pcreate"), H5Pclose);
        check(H5Pset_chunk(dcpl, 4, chunk), "H5Pset_chunk");
        // Parallel HDF5 allocates chunks up front; every element is written, so no fill.
        check(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY), "H5Pset_alloc_time");
        check(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER), "H5Pset_fill_time");
        Handle ftype = detail::file_type(type);
        hid_t id = check(H5Dcreate2(file_, name.c_str(), ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT),
                         "cannot create dataset '" + name + "' in '" + path_ + "'");
        tensors_.push_back({name, id, shape});
    });
}

void OutputFile::write_part(const Tensor& t, const Slab& part, std::int64_t nt_buffer, std::int64_t offset,
                            const void* data, ElementType memory_type) {
    float unused = 0;
    agreed(comm_, [&] {
        Handle space(check(H5Dget_space(t.id), "H5Dget_space"), H5Sclose);
        Handle fsel = detail::file_selection(space, part);
        Handle msel = detail::memory_selection(t.shape, part, nt_buffer, offset);
        Handle mtype = detail::memory_type(memory_type);
        Handle dxpl = detail::collective_transfer(conversion_buffer_bytes);
        check(H5Dwrite(t.id, mtype, msel, fsel, dxpl, data ? data : &unused),
              "cannot write dataset '" + t.name + "' of '" + path_ + "'");
    });
}

void OutputFile::write_block(const std::string& name, const Slab& block, const void* data, ElementType memory_type) {
    const Tensor& t = tensor(name);
    write_part(t, block, block.tokens.size(), 0, data, memory_type);
}

void OutputFile::write(const std::string& name, const Slab& slab, const float* src, const ProgressFn& progress) {
    const Tensor& t = tensor(name);
    const Shape& g = t.shape;
    const std::int64_t nb = slab.batch.size(), nt = slab.tokens.size();
    const std::int64_t block = block_tokens(g, nb, write_block_bytes);
    const std::int64_t blocks = detail::collective_block_count(comm_, nb > 0 ? nt : 0, block);
    for (std::int64_t i = 0; i < blocks; ++i) {
        TokenRange part{std::min(slab.tokens.begin + i * block, slab.tokens.end),
                        std::min(slab.tokens.begin + (i + 1) * block, slab.tokens.end)};
        Slab piece{nb > 0 ? slab.batch : TokenRange{}, part};
        write_part(t, piece, nt, part.begin - slab.tokens.begin, src, ElementType::float32);
        if (progress) progress(std::min(g.batch * g.tokens, (i + 1) * (g.batch * g.tokens) / blocks),
                               g.batch * g.tokens);
    }
}

void OutputFile::write_planes(const Planes& planes) {
    agreed(comm_, [&] {
        hsize_t dims[4] = {static_cast<hsize_t>(planes.heads()), static_cast<hsize_t>(planes.tables()),
                           static_cast<hsize_t>(planes.planes_per_table()), static_cast<hsize_t>(planes.dim())};
        Handle space(check(H5Screate_simple(4, dims, nullptr), "H5Screate_simple"), H5Sclose);
        Handle ftype = detail::file_type(ElementType::float32);
        Handle dataset(check(H5Dcreate2(file_, "planes", ftype, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                             "cannot create dataset 'planes' in '" + path_ + "'"),
                       H5Dclose, true);
        // Every rank holds the same planes: rank 0 writes them, the others take part with nothing.
        Handle fsel(check(H5Scopy(space), "H5Scopy"), H5Sclose);
        Handle msel(check(H5Scopy(space), "H5Scopy"), H5Sclose);
        if (comm_rank(comm_) != 0) {
            check(H5Sselect_none(fsel), "H5Sselect_none");
            check(H5Sselect_none(msel), "H5Sselect_none");
        }
        Handle dxpl = detail::collective_transfer(conversion_buffer_bytes);
        check(H5Dwrite(dataset, H5T_NATIVE_FLOAT, msel, fsel, dxpl, planes.values().data()),
              "cannot write dataset 'planes' of '" + path_ + "'");
        dataset.close("cannot close dataset 'planes'");
    });
}

namespace {

void write_attribute(hid_t file, const std::string& name, hid_t file_type, hid_t memory_type, const void* value) {
    if (H5Aexists(file, name.c_str()) > 0) check(H5Adelete(file, name.c_str()), "H5Adelete");
    Handle space(check(H5Screate(H5S_SCALAR), "H5Screate"), H5Sclose);
    Handle attr(check(H5Acreate2(file, name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT),
                      "cannot create attribute '" + name + "'"),
                H5Aclose);
    check(H5Awrite(attr, memory_type, value), "cannot write attribute '" + name + "'");
}

}  // namespace

void OutputFile::set_attribute(const std::string& name, std::int64_t value) {
    agreed(comm_, [&] { write_attribute(file_, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value); });
}

void OutputFile::set_attribute(const std::string& name, std::uint64_t value) {
    agreed(comm_, [&] { write_attribute(file_, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value); });
}

void OutputFile::set_attribute(const std::string& name, double value) {
    agreed(comm_, [&] { write_attribute(file_, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value); });
}

void OutputFile::set_attribute(const std::string& name, const std::string& value) {
    agreed(comm_, [&] {
        // Variable-length UTF-8: h5py reads it as str, h5dump prints it plainly.
        Handle type(check(H5Tcopy(H5T_C_S1), "H5Tcopy"), H5Tclose);
        check(H5Tset_size(type, H5T_VARIABLE), "H5Tset_size");
        check(H5Tset_cset(type, H5T_CSET_UTF8), "H5Tset_cset");
        const char* text = value.c_str();
        write_attribute(file_, name, type, type, &text);
    });
}

void OutputFile::commit() {
    agreed(comm_, [&] {
        for (Tensor& t : tensors_) {
            hid_t id = t.id;
            t.id = -1;
            check(H5Dclose(id), "cannot close dataset '" + t.name + "' of '" + path_ + "'");
        }
        tensors_.clear();
        hid_t f = file_;
        file_ = -1;
        check(H5Fclose(f), "cannot close output '" + path_ + "'");
    });
    // check_all above returned on every rank only once every rank had closed the file, so the
    // data is complete on disk before the name appears.
    std::string problem;
    if (comm_rank(comm_) == 0) {
        std::error_code ec;
        std::filesystem::rename(tmp_path_, path_, ec);
        if (ec) problem = "cannot rename the finished output to '" + path_ + "': " + ec.message();
    }
    check_all(comm_, problem.empty(), problem);
    committed_ = true;
}

}  // namespace racesp::io
