// racesp bench --device cuda end to end (the binary): its JSON lines against what they must hold,
// computed here from the line's own runs and the shapes: the median, minimum and maximum of
// times_s, tokens_per_s = batch x tokens / median_s, and peak_device_bytes at least the eight
// token buffers (q, k, v, o, do, dq, dk, dv: 8 T H D bytes of the dtype). Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <nlohmann/json.hpp>

#include "harness.hpp"
#include "racesp/cuda_attention.hpp"

namespace racesp::clitest {
namespace {

const int env_ready = ::setenv("NCCL_NVLS_ENABLE", "0", 1);

int gpus() { return cuda::device_count(); }

#define NEED_GPUS(n) \
    if (gpus() < (n)) GTEST_SKIP() << "needs " << (n) << " CUDA device(s), found " << gpus()

std::vector<nlohmann::json> json_lines(const std::string& output) {
    std::vector<nlohmann::json> lines;
    std::istringstream in(output);
    for (std::string line; std::getline(in, line);)
        if (!line.empty() && line.front() == '{') lines.push_back(nlohmann::json::parse(line));
    return lines;
}

// The line against its own runs and the buffers it must have held.
void check_line(const nlohmann::json& j, std::int64_t tokens, bool causal, const std::string& dtype, std::size_t bytes,
                int runs) {
    EXPECT_EQ(j["device"], "cuda");
    EXPECT_EQ(j["timer"], "cuda_events");
    EXPECT_EQ(j["causal"], causal);
    EXPECT_EQ(j["dtype"], dtype);
    EXPECT_EQ(j["tokens"].get<std::int64_t>(), tokens);
    EXPECT_FALSE(j["gpu"].get<std::string>().empty());
    std::vector<double> t = j["times_s"].get<std::vector<double>>();
    ASSERT_EQ(static_cast<int>(t.size()), runs);
    std::sort(t.begin(), t.end());
    EXPECT_GT(t.front(), 0.0);
    EXPECT_DOUBLE_EQ(j["median_s"].get<double>(), t[t.size() / 2]);
    EXPECT_DOUBLE_EQ(j["min_s"].get<double>(), t.front());
    EXPECT_DOUBLE_EQ(j["max_s"].get<double>(), t.back());
    EXPECT_NEAR(j["tokens_per_s"].get<double>(), static_cast<double>(tokens) / t[t.size() / 2],
                1e-9 * j["tokens_per_s"].get<double>());
    EXPECT_GT(j["forward_s"].get<double>(), 0.0);
    EXPECT_GT(j["backward_s"].get<double>(), 0.0);
    const std::int64_t heads = j["heads"].get<std::int64_t>(), dim = j["dim"].get<std::int64_t>();
    const std::int64_t per_rank = tokens / j["sp_size"].get<std::int64_t>();
    EXPECT_GE(j["peak_device_bytes"].get<std::size_t>(), 8 * static_cast<std::size_t>(per_rank * heads * dim) * bytes);
}

TEST(CudaBench, OneGpuBothModes) {
    ASSERT_EQ(env_ready, 0);
    NEED_GPUS(1);
    ScratchDir dir;
    // 300,000 tokens: not a multiple of any chunk or segment.
    Result run = racesp(0, "bench --device cuda --tokens 300000 --both --repeats 3 --warmup 1", dir.path());
    ASSERT_EQ(run.code, 0) << run.output;
    const std::vector<nlohmann::json> lines = json_lines(run.output);
    ASSERT_EQ(lines.size(), 2u) << run.output;
    check_line(lines[0], 300000, false, "bf16", 2, 3);
    check_line(lines[1], 300000, true, "bf16", 2, 3);
    EXPECT_GE(lines[0]["collective_alone_s"].get<double>(), 0.0);
}

TEST(CudaBench, Float32AndCausalFlag) {
    NEED_GPUS(1);
    ScratchDir dir;
    Result run = racesp(0, "bench --device cuda --dtype fp32 --causal --tokens 64K --heads 2 --dim 64 --repeats 2",
                        dir.path());
    ASSERT_EQ(run.code, 0) << run.output;
    const std::vector<nlohmann::json> lines = json_lines(run.output);
    ASSERT_EQ(lines.size(), 1u) << run.output;
    check_line(lines[0], 64000, true, "fp32", 4, 2);  // counts are decimal: 64K = 64,000
    EXPECT_EQ(lines[0]["heads"].get<int>(), 2);
}

TEST(CudaBench, TwoGpusWeakScaling) {
    NEED_GPUS(2);
    ScratchDir dir;
    Result run = racesp(2, "bench --device cuda --tokens-per-rank 128K --repeats 2", dir.path());
    ASSERT_EQ(run.code, 0) << run.output;
    const std::vector<nlohmann::json> lines = json_lines(run.output);
    ASSERT_EQ(lines.size(), 1u) << run.output;  // rank 0 prints
    check_line(lines[0], 2 * 131072, false, "bf16", 2, 2);
    EXPECT_EQ(lines[0]["sp_size"].get<int>(), 2);
    EXPECT_TRUE(lines[0]["weak_scaling"].get<bool>());
}

TEST(CudaBench, UnknownDtypeIsOneError) {
    NEED_GPUS(1);
    ScratchDir dir;
    Result run = racesp(0, "bench --device cuda --dtype int8 --tokens 1000", dir.path());
    EXPECT_NE(run.code, 0);
    const std::vector<std::string> lines = run.error_lines();
    ASSERT_EQ(lines.size(), 1u) << run.output;
    EXPECT_NE(lines[0].find("unknown dtype 'int8' (fp32, bf16 or fp16)"), std::string::npos) << lines[0];
}

}  // namespace
}  // namespace racesp::clitest
