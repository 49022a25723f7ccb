// How much host memory a run may still take (Linux), so that a shard that cannot fit stops with
// one clear error before it allocates, instead of being killed by the kernel's out-of-memory
// killer halfway through (Linux overcommits: large allocations succeed and fail only when used).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace racesp::model {

// The smaller of the node's MemAvailable (/proc/meminfo) and, under cgroup v2 (as SLURM's task
// containment sets it up), the least that the process's cgroup or one of its ancestors still
// allows (memory.max - memory.current). 0 when neither can be read.
std::uint64_t available_host_bytes();

// The least that a memory cgroup or one of its ancestors still allows (limit - usage), given the
// text of /proc/self/cgroup and the cgroup file systems' root (/sys/fs/cgroup: v2 there, v1's
// memory controller under memory/). UINT64_MAX where no limit is set or none can be read.
std::uint64_t cgroup_headroom(const std::string& proc_self_cgroup, const std::filesystem::path& root);

// "12.3 GiB", for messages.
std::string gib(std::uint64_t bytes);

}  // namespace racesp::model
