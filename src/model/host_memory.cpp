// Host memory still available to this process (host_memory.hpp).
#include "host_memory.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>

namespace racesp::model {

namespace {

constexpr std::uint64_t kUnknown = std::numeric_limits<std::uint64_t>::max();

// "MemAvailable:   123456 kB" of /proc/meminfo, in bytes.
std::uint64_t mem_available() {
    std::ifstream in("/proc/meminfo");
    std::string key, unit;
    std::uint64_t kib = 0;
    while (in >> key >> kib) {
        std::getline(in, unit);
        if (key == "MemAvailable:") return kib * 1024;
    }
    return kUnknown;
}

// A cgroup file holding one number ("max" or unreadable: unknown).
std::uint64_t read_number(const std::filesystem::path& file) {
    std::ifstream in(file);
    std::string text;
    if (!(in >> text) || text == "max") return kUnknown;
    std::uint64_t value = 0;
    std::istringstream(text) >> value;
    return value;
}

}  // namespace

std::uint64_t cgroup_headroom(const std::string& proc_self_cgroup, const std::filesystem::path& root) {
    std::istringstream in(proc_self_cgroup);
    std::string line;
    std::filesystem::path dir_v2, dir_v1;
    while (std::getline(in, line)) {
        const auto a = line.find(':'), b = line.find(':', a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        std::string controllers = ",";  // ",cpu,memory," (built piecewise: GCC 12 warns on "," + s + ",")
        controllers.append(line, a + 1, b - a - 1).append(",");
        const std::filesystem::path where = std::filesystem::path(line.substr(b + 1)).relative_path();
        auto below = [&](const std::filesystem::path& top) { return where.empty() ? top : top / where; };
        if (line.rfind("0::", 0) == 0) dir_v2 = below(root);
        else if (controllers.find(",memory,") != std::string::npos) dir_v1 = below(root / "memory");
    }
    std::uint64_t least = kUnknown;
    // From the process's cgroup up to the hierarchy's root: the least limit - usage on the way.
    auto walk = [&](std::filesystem::path dir, const std::filesystem::path& top, const char* limit_file,
                    const char* usage_file) {
        while (true) {
            const std::uint64_t limit = read_number(dir / limit_file), used = read_number(dir / usage_file);
            if (limit != kUnknown && used != kUnknown) least = std::min(least, limit > used ? limit - used : 0);
            if (dir == top || dir == dir.parent_path()) break;
            dir = dir.parent_path();
        }
    };
    if (!dir_v2.empty()) walk(dir_v2, root, "memory.max", "memory.current");
    if (!dir_v1.empty()) walk(dir_v1, root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes");
    return least;
}

std::uint64_t available_host_bytes() {
    std::ifstream in("/proc/self/cgroup");
    const std::string cgroups{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    const std::uint64_t least = std::min(mem_available(), cgroup_headroom(cgroups, "/sys/fs/cgroup"));
    return least == kUnknown ? 0 : least;
}

std::string gib(std::uint64_t bytes) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f GiB", double(bytes) / double(1ull << 30));
    return text;
}

}  // namespace racesp::model
