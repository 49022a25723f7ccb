// Measurements (metrics.hpp).
#include "metrics.hpp"

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "racesp/failure.hpp"

namespace racesp::cli {

std::int64_t peak_rss_bytes() {
    struct rusage usage {};
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<std::int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

std::int64_t max_over_ranks(MPI_Comm comm, std::int64_t value) {
    std::int64_t most = 0;
    MPI_Allreduce(&value, &most, 1, MPI_INT64_T, MPI_MAX, comm);
    return most;
}

double max_over_ranks(MPI_Comm comm, double value) {
    double most = 0;
    MPI_Allreduce(&value, &most, 1, MPI_DOUBLE, MPI_MAX, comm);
    return most;
}

namespace {

std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) {
            std::size_t colon = line.find(':');
            if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
        }
    }
    return "unknown";
}

}  // namespace

nlohmann::json machine_description(MPI_Comm world) {
    int rank = 0, size = 1;
    MPI_Comm_rank(world, &rank);
    MPI_Comm_size(world, &size);
    char name[MPI_MAX_PROCESSOR_NAME] = {};
    int length = 0;
    MPI_Get_processor_name(name, &length);
    std::vector<char> all(static_cast<std::size_t>(size) * MPI_MAX_PROCESSOR_NAME);
    MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR, world);
    std::set<std::string> hosts;
    for (int r = 0; r < size; ++r) hosts.insert(std::string(all.data() + static_cast<std::size_t>(r) * MPI_MAX_PROCESSOR_NAME));
    return {{"ranks", size},
            {"hosts", hosts.size()},
            {"host", std::string(name)},
            {"threads_per_rank", omp_get_max_threads()},
            {"cores_on_host", static_cast<long>(sysconf(_SC_NPROCESSORS_ONLN))},
            {"cpu", cpu_model()},
            {"racesp_version", RACESP_VERSION}};
}

void write_text_file(MPI_Comm world, const std::string& path, const std::string& text) {
    int rank = 0;
    MPI_Comm_rank(world, &rank);
    std::string problem;
    if (rank == 0) {
        std::ofstream out(path, std::ios::trunc);
        out << text;
        out.close();
        if (!out) problem = "cannot write '" + path + "': " + std::strerror(errno);
    }
    check_all(world, problem.empty(), problem);
}

void check_writable_file(MPI_Comm world, const std::string& path, const std::string& option,
                         const std::vector<std::string>& others) {
    int rank = 0;
    MPI_Comm_rank(world, &rank);
    std::string problem;
    if (rank == 0) {
        namespace fs = std::filesystem;
        std::error_code ec;
        fs::path dir = fs::absolute(fs::path(path)).parent_path();
        for (const std::string& other : others) {
            std::error_code e1, e2;
            if (fs::weakly_canonical(path, e1) == fs::weakly_canonical(other, e2) && !e1 && !e2)
                problem = option + " '" + path + "' is also '" + other + "'; choose another file";
        }
        if (problem.empty()) {
            if (fs::is_directory(path, ec)) problem = option + " '" + path + "' is a directory";
            else if (!fs::is_directory(dir, ec))
                problem = option + ": directory '" + dir.string() + "' does not exist";
            else if (::access(dir.c_str(), W_OK) != 0)
                problem = option + ": directory '" + dir.string() + "' is not writable: " + std::strerror(errno);
        }
    }
    check_all(world, problem.empty(), problem);
}

}  // namespace racesp::cli
