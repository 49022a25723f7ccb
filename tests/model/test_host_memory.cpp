// The cgroup limits that bound a run's host memory (src/model/host_memory.cpp), on cgroup trees
// written into a scratch folder: v2 (SLURM's job / step / task nesting) and v1's memory controller.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include <unistd.h>

#include "host_memory.hpp"

namespace racesp::model {
namespace {

namespace fs = std::filesystem;
constexpr std::uint64_t kNone = std::numeric_limits<std::uint64_t>::max();

class CgroupTree : public ::testing::Test {
protected:
    void SetUp() override { fs::create_directories(root); }
    void TearDown() override { fs::remove_all(root); }
    void write(const fs::path& dir, const std::string& file, const std::string& text) {
        fs::create_directories(root / dir);
        std::ofstream(root / dir / file) << text << "\n";
    }
    const fs::path root = fs::temp_directory_path() / ("racesp-cgroup-test-" + std::to_string(::getpid()));
};

TEST_F(CgroupTree, V2TheLeastHeadroomOnTheWayUp) {
    // The job allows 1000 bytes and uses 400 (600 left); its step has no limit ("max"); the task
    // allows 900 and uses 50 (850 left). The least on the way up, the job's 600, bounds the task.
    write("job_7", "memory.max", "1000");
    write("job_7", "memory.current", "400");
    write("job_7/step_0", "memory.max", "max");
    write("job_7/step_0", "memory.current", "390");
    write("job_7/step_0/task_0", "memory.max", "900");
    write("job_7/step_0/task_0", "memory.current", "50");
    EXPECT_EQ(cgroup_headroom("0::/job_7/step_0/task_0\n", root), 600u);
    // A task that uses more than its limit has no headroom (not a wrapped-around huge number).
    write("job_7/step_0/task_0", "memory.current", "950");
    EXPECT_EQ(cgroup_headroom("0::/job_7/step_0/task_0\n", root), 0u);
}

TEST_F(CgroupTree, V1MemoryControllerAmongOthers) {
    write("memory/slurm/uid_0/job_3", "memory.limit_in_bytes", "5000");
    write("memory/slurm/uid_0/job_3", "memory.usage_in_bytes", "1500");
    write("memory", "memory.limit_in_bytes", "9223372036854771712");  // v1's "unlimited"
    write("memory", "memory.usage_in_bytes", "123456");
    const std::string cgroup = "12:pids:/slurm/uid_0/job_3\n4:cpuacct,memory:/slurm/uid_0/job_3\n0::/\n";
    EXPECT_EQ(cgroup_headroom(cgroup, root), 3500u);
}

TEST_F(CgroupTree, NoLimitsAnywhere) {
    write("", "memory.max", "max");
    write("", "memory.current", "100");
    EXPECT_EQ(cgroup_headroom("0::/\n", root), kNone);           // the root: no limit
    EXPECT_EQ(cgroup_headroom("0::/gone/away\n", root), kNone);  // files that cannot be read
    EXPECT_EQ(cgroup_headroom("", root), kNone);
}

}  // namespace
}  // namespace racesp::model
