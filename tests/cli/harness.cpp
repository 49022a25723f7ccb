// Test helpers (harness.hpp).
#include "harness.hpp"

#include <hdf5.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <stdexcept>

namespace racesp::clitest {

std::vector<std::string> Result::error_lines() const {
    std::vector<std::string> lines;
    std::istringstream in(output);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("racesp: error:", 0) == 0) lines.push_back(line);
    return lines;
}

Result racesp(int ranks, const std::string& args, const fs::path& dir, int timeout_s) {
    // mpiexec refuses root unless told it is on purpose (containers, CI); ranks share the cores,
    // so one OpenMP thread each, waiting passively.
    std::string command = "cd '" + dir.string() + "' && env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                          "OMP_WAIT_POLICY=passive timeout " + std::to_string(timeout_s) + " ";
    if (ranks > 0)
        command += "env OMP_NUM_THREADS=1 " + std::string(RACESP_MPIEXEC) + " " + RACESP_MPIEXEC_NUMPROC_FLAG + " " +
                   std::to_string(ranks) + " --oversubscribe ";
    command += std::string(RACESP_BINARY) + " " + args + " 2>&1";
    Result run;
    FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe) throw std::runtime_error("popen failed: " + command);
    std::array<char, 4096> buf;
    std::size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) run.output.append(buf.data(), n);
    int status = ::pclose(pipe);
    run.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return run;
}

ScratchDir::ScratchDir() {
    std::string pattern = (fs::temp_directory_path() / "racesp-cli-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
}

ScratchDir::~ScratchDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
}

std::vector<std::string> ScratchDir::entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

namespace {

// Serial HDF5 file handle.
struct File {
    hid_t id;
    explicit File(const fs::path& path, unsigned flags = H5F_ACC_RDONLY) {
        id = H5Fopen(path.c_str(), flags, H5P_DEFAULT);
        if (id < 0) throw std::runtime_error("cannot open " + path.string());
    }
    ~File() { H5Fclose(id); }
};

hid_t open_dataset(const File& f, const std::string& name) {
    hid_t d = H5Dopen2(f.id, name.c_str(), H5P_DEFAULT);
    if (d < 0) throw std::runtime_error("no dataset " + name);
    return d;
}

hid_t open_attribute(const File& f, const std::string& name) {
    hid_t a = H5Aopen(f.id, name.c_str(), H5P_DEFAULT);
    if (a < 0) throw std::runtime_error("no attribute " + name);
    return a;
}

}  // namespace

std::vector<std::uint64_t> dataset_dims(const fs::path& file, const std::string& dataset) {
    File f(file);
    hid_t d = open_dataset(f, dataset);
    hid_t s = H5Dget_space(d);
    int rank = H5Sget_simple_extent_ndims(s);
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    H5Sget_simple_extent_dims(s, dims.data(), nullptr);
    H5Sclose(s);
    H5Dclose(d);
    return {dims.begin(), dims.end()};
}

std::vector<float> read_floats(const fs::path& file, const std::string& dataset, Shape* shape) {
    std::vector<std::uint64_t> dims = dataset_dims(file, dataset);
    std::size_t n = 1;
    for (auto d : dims) n *= d;
    if (shape && dims.size() == 4)
        *shape = {std::int64_t(dims[0]), std::int64_t(dims[1]), std::int64_t(dims[2]), std::int64_t(dims[3])};
    std::vector<float> out(n);
    File f(file);
    hid_t d = open_dataset(f, dataset);
    herr_t st = H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data());
    H5Dclose(d);
    if (st < 0) throw std::runtime_error("cannot read " + dataset);
    return out;
}

std::size_t dataset_type_size(const fs::path& file, const std::string& dataset) {
    File f(file);
    hid_t d = open_dataset(f, dataset);
    hid_t t = H5Dget_type(d);
    std::size_t size = H5Tget_size(t);
    H5Tclose(t);
    H5Dclose(d);
    return size;
}

bool has_dataset(const fs::path& file, const std::string& dataset) {
    File f(file);
    return H5Lexists(f.id, dataset.c_str(), H5P_DEFAULT) > 0;
}

bool has_attribute(const fs::path& file, const std::string& name) {
    File f(file);
    return H5Aexists(f.id, name.c_str()) > 0;
}

std::int64_t int_attribute(const fs::path& file, const std::string& name) {
    File f(file);
    hid_t a = open_attribute(f, name);
    std::int64_t v = 0;
    H5Aread(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    return v;
}

std::uint64_t uint_attribute(const fs::path& file, const std::string& name) {
    File f(file);
    hid_t a = open_attribute(f, name);
    std::uint64_t v = 0;
    H5Aread(a, H5T_NATIVE_UINT64, &v);
    H5Aclose(a);
    return v;
}

double double_attribute(const fs::path& file, const std::string& name) {
    File f(file);
    hid_t a = open_attribute(f, name);
    double v = 0;
    H5Aread(a, H5T_NATIVE_DOUBLE, &v);
    H5Aclose(a);
    return v;
}

std::string string_attribute(const fs::path& file, const std::string& name) {
    File f(file);
    hid_t a = open_attribute(f, name);
    hid_t t = H5Aget_type(a);
    std::string out;
    if (H5Tis_variable_str(t) > 0) {
        char* text = nullptr;
        H5Aread(a, t, &text);
        if (text) out = text;
        H5free_memory(text);
    } else {
        std::vector<char> buf(H5Tget_size(t) + 1, '\0');
        H5Aread(a, t, buf.data());
        out = buf.data();
    }
    H5Tclose(t);
    H5Aclose(a);
    return out;
}

void write_dataset(const fs::path& file, const std::string& name, const std::vector<std::uint64_t>& dims,
                   const std::vector<double>& values, FileType type) {
    hid_t f = fs::exists(file) ? H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)
                               : H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) throw std::runtime_error("cannot write " + file.string());
    std::vector<hsize_t> d(dims.begin(), dims.end());
    hid_t space = H5Screate_simple(static_cast<int>(d.size()), d.data(), nullptr);
    hid_t ftype = -1;
    switch (type) {
        case FileType::float32: ftype = H5Tcopy(H5T_IEEE_F32LE); break;
        case FileType::float64: ftype = H5Tcopy(H5T_IEEE_F64LE); break;
        case FileType::int32: ftype = H5Tcopy(H5T_STD_I32LE); break;
        case FileType::float16:
            // As h5py writes numpy float16.
            ftype = H5Tcopy(H5T_IEEE_F32LE);
            H5Tset_fields(ftype, 15, 10, 5, 0, 10);
            H5Tset_size(ftype, 2);
            H5Tset_ebias(ftype, 15);
            break;
    }
    hid_t ds = H5Dcreate2(f, name.c_str(), ftype, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
    H5Dclose(ds);
    H5Tclose(ftype);
    H5Sclose(space);
    H5Fclose(f);
    if (st < 0) throw std::runtime_error("cannot write dataset " + name);
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) throw std::runtime_error("sizes differ");
    double worst = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])));
        scale = std::max(scale, std::fabs(double(b[i])));
    }
    return scale > 0 ? worst / scale : worst;
}

}  // namespace racesp::clitest
