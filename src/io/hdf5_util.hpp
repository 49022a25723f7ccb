// Small helpers around the HDF5 C API shared by the reader and the writer: handles that close
// themselves, errors as exceptions with HDF5's own reason, property lists for MPI-IO.
#pragma once

#include <hdf5.h>
#include <mpi.h>

#include <exception>
#include <string>

#include "racesp/distributed.hpp"
#include "racesp/failure.hpp"
#include "racesp/io.hpp"

namespace racesp::io::detail {

// Silences HDF5's own error printing (we report one line ourselves) and registers the fast
// float16 -> float32 conversion. Idempotent; every entry point of the io library calls it.
void init_hdf5();
// Registers to_half's inverse as HDF5's conversion from the IEEE half file type to float
// (half.cpp): HDF5's generic soft conversion does ~20 M values/s, this ~200 M.
void register_half_conversion();

// The most specific message on HDF5's error stack (then cleared), e.g.
// "file signature not found"; empty when the stack is empty.
std::string hdf5_reason();

// Throws InputError("<what>: <HDF5's reason>") when status < 0; returns status otherwise.
hid_t check(hid_t status, const std::string& what);

// Owns one HDF5 identifier. A `collective` handle (a file or dataset under MPI-IO) is not
// closed while an exception unwinds: other ranks may not be closing theirs, and a collective
// close would hang; HDF5 closes it at MPI_Finalize, or the job is aborted.
class Handle {
public:
    Handle() = default;
    Handle(hid_t id, herr_t (*closer)(hid_t), bool collective = false)
        : id_(id), close_(closer), collective_(collective) {}
    ~Handle() { reset(); }
    Handle(Handle&& other) noexcept { *this = std::move(other); }
    Handle& operator=(Handle&& other) noexcept {
        if (this != &other) {
            reset();
            id_ = other.id_;
            close_ = other.close_;
            collective_ = other.collective_;
            other.id_ = -1;
        }
        return *this;
    }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;

    hid_t get() const { return id_; }
    operator hid_t() const { return id_; }
    // Closes now, throwing on failure (use on the normal path for collective handles).
    void close(const std::string& what);

private:
    void reset() {
        if (id_ >= 0 && close_ && !(collective_ && std::uncaught_exceptions() > 0)) close_(id_);
        id_ = -1;
    }
    hid_t id_ = -1;
    herr_t (*close_)(hid_t) = nullptr;
    bool collective_ = false;
};

// File access with the MPI-IO driver over `comm`, collective metadata reads and writes.
Handle mpio_file_access(MPI_Comm comm);
// Transfers with H5FD_MPIO_COLLECTIVE, and a type-conversion buffer of `conversion_bytes`.
Handle collective_transfer(std::size_t conversion_bytes);

// The file type for an element type (IEEE little endian; float16 as h5py writes it).
Handle file_type(ElementType type);
// The in-memory type for an element type (native float/double, or the half type).
Handle memory_type(ElementType type);
// Classifies an HDF5 float type; other_float for unknown layouts.
ElementType classify_float(hid_t type);

// A dataspace selecting `slab` of a [B, T, H, D] dataset (none when the slab is empty), and
// the matching memory space for a buffer [nb, nt_buffer, H, D] where the block starts at token
// `offset` of the buffer.
Handle file_selection(hid_t dataset_space, const Slab& slab);
Handle memory_selection(const Shape& global, const Slab& slab, std::int64_t nt_buffer, std::int64_t offset);

// Runs `local` (which may make collective HDF5 calls, made alike by every rank), then agrees:
// if it threw on any rank, every rank throws CollectiveError with the lowest failing rank's
// message. This keeps ranks in step when HDF5 fails on some of them only.
template <class F>
void agreed(MPI_Comm comm, F&& local) {
    bool ok = true;
    std::string message;
    try {
        local();
    } catch (const std::exception& e) {
        ok = false;
        message = e.what();
    }
    check_all(comm, ok, message);
}

// The number of blocks every rank must take part in: the largest over ranks of ceil(nt / block).
std::int64_t collective_block_count(MPI_Comm comm, std::int64_t tokens, std::int64_t block);

}  // namespace racesp::io::detail
