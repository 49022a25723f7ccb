// HDF5 sequence files (DESIGN.md §5): [B, T, H, D] tensors read and written with parallel HDF5
// (MPI-IO driver, collective transfers, chunked datasets). Each rank moves only its slab, a
// batch range x token range, in blocks of tokens, so memory stays proportional to the shard.
//
// Every function here is collective over the communicator it is given, and every error a user
// can cause (missing file or dataset, wrong rank, NaN, unwritable output, ...) is thrown as a
// CollectiveError (failure.hpp) on every rank at once, so that the command prints one line from
// rank 0 and every rank exits non-zero.
//
// Objects never communicate in their destructors: a destructor that runs while an exception
// unwinds the stack may be on one rank only. An OutputFile destroyed without commit() removes
// its temporary file, so a final output name appears only for a complete file.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "racesp/distributed.hpp"  // TokenRange
#include "racesp/planes.hpp"
#include "racesp/tensor.hpp"

namespace racesp::io {

// Element types of tensors in files. Any HDF5 float type is read as float32 (HDF5 converts);
// `other_float` is a float type that is none of the three IEEE ones (e.g. bfloat16).
enum class ElementType { float16, float32, float64, other_float };
std::string_view to_string(ElementType type);
// "float16", "float32" or "float64"; throws ConfigError otherwise.
ElementType parse_element_type(std::string_view name);

// The part of a [B, T, H, D] tensor that one rank moves: batch entries [batch.begin, batch.end)
// x tokens [tokens.begin, tokens.end), all heads and dims, stored row-major [nb, nt, H, D].
struct Slab {
    TokenRange batch, tokens;
    std::int64_t elements(const Shape& global) const {
        return batch.size() * tokens.size() * global.heads * global.dim;
    }
};

// Called after each block with the tokens (batch entries x positions, over all ranks) done so far.
using ProgressFn = std::function<void(std::int64_t done, std::int64_t total)>;

struct TensorInfo {
    std::string name;
    Shape shape;
    ElementType type = ElementType::float32;
};

// An input file opened read-only by every rank of `comm` (it is never modified).
class InputFile {
public:
    // Collective. Errors: missing file, not a regular file, unreadable, not HDF5.
    InputFile(MPI_Comm comm, const std::string& path);
    ~InputFile();
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;

    const std::string& path() const { return path_; }

    // Collective. Whether `name` (a path inside the file, e.g. "q" or "data/q") is a dataset.
    bool contains(const std::string& name) const;
    // Collective. Errors: missing dataset (named), not a dataset, not 4-D, not a float type,
    // an extent of zero.
    TensorInfo inspect(const std::string& name) const;

    // Collective. Reads this rank's slab of `tensor` as float32 into dst ([nb, nt, H, D]) in
    // blocks of tokens, then checks that every value is finite: otherwise every rank throws an
    // error naming the dataset and the globally first bad index [b, t, h, d].
    void read(const TensorInfo& tensor, const Slab& slab, float* dst, const ProgressFn& progress = {}) const;

    // Collective. Closes the file; the destructor does it too when no exception is unwinding.
    void close();

private:
    MPI_Comm comm_;
    std::string path_;
    std::int64_t file_ = -1;  // hid_t
};

// Collective. Checks, before any work, that `output` may be written: it is none of `inputs`
// (canonical paths and same-file tests), it does not exist unless `overwrite`, it is not a
// directory, and its directory exists and accepts a new file.
void check_output_path(MPI_Comm comm, const std::string& output, const std::vector<std::string>& inputs,
                       bool overwrite);

// A new HDF5 file that appears under its final name only when complete: everything goes to a
// hidden temporary file in the same directory, which rank 0 renames after every rank closed it.
class OutputFile {
public:
    // Collective: creates the temporary file. Errors as in check_output_path.
    OutputFile(MPI_Comm comm, const std::string& path, bool overwrite);
    // Removes the temporary file unless commit() succeeded (no collective call).
    ~OutputFile();
    OutputFile(const OutputFile&) = delete;
    OutputFile& operator=(const OutputFile&) = delete;

    const std::string& path() const { return path_; }
    const std::string& temporary_path() const { return tmp_path_; }

    // Collective. A chunked [B, T, H, D] dataset of the given file type (not other_float).
    void create_tensor(const std::string& name, const Shape& shape, ElementType type);
    // Collective. Writes this rank's slab from float32 src ([nb, nt, H, D]) in blocks of tokens.
    void write(const std::string& name, const Slab& slab, const float* src, const ProgressFn& progress = {});
    // Collective; every rank calls it the same number of times per dataset (empty blocks
    // included). Writes one block whose data is in memory as `memory_type`: float32, float64,
    // or float16 (IEEE half bits, as from to_half). No conversion when it matches the file type.
    void write_block(const std::string& name, const Slab& block, const void* data, ElementType memory_type);

    // Collective. `planes` float32 [H, L, P, D], written by rank 0.
    void write_planes(const Planes& planes);

    // Collective, the same value on every rank. Root attributes.
    void set_attribute(const std::string& name, std::int64_t value);
    void set_attribute(const std::string& name, std::uint64_t value);
    void set_attribute(const std::string& name, double value);
    void set_attribute(const std::string& name, const std::string& value);

    // Collective: closes the file on every rank, then rank 0 renames it to the final path.
    void commit();

private:
    struct Tensor {
        std::string name;
        std::int64_t id = -1;  // hid_t of the open dataset
        Shape shape;
    };
    const Tensor& tensor(const std::string& name) const;
    void write_part(const Tensor& t, const Slab& part, std::int64_t nt_buffer, std::int64_t offset,
                    const void* data, ElementType memory_type);

    MPI_Comm comm_;
    std::string path_, tmp_path_;
    std::int64_t file_ = -1;  // hid_t
    std::vector<Tensor> tensors_;
    bool committed_ = false;
};

// Tokens per block so that one block of a rank (nb batch entries) is about `target_bytes`
// of float32.
std::int64_t block_tokens(const Shape& shape, std::int64_t batch_entries, std::int64_t target_bytes);

// IEEE half precision, round to nearest even; exact in the other direction.
std::uint16_t to_half(float x);
float from_half(std::uint16_t h);

}  // namespace racesp::io
