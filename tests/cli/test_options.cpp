// Help, version, --config files and their precedence, progress and summary lines, bench output.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "harness.hpp"
#include "racesp/io.hpp"

namespace racesp::clitest {

namespace {

TEST(Options, HelpListsEveryCommand) {
    ScratchDir dir;
    for (const char* args : {"help", "--help", "-h"}) {
        Result run = racesp(0, args, dir.path());
        EXPECT_EQ(run.code, 0) << run.output;
        for (const char* command : {"attention", "generate", "bench", "help"})
            EXPECT_NE(run.output.find(std::string("  ") + command), std::string::npos) << run.output;
    }
}

TEST(Options, EveryCommandHasHelp) {
    ScratchDir dir;
    for (const char* command : {"attention", "generate", "bench"}) {
        Result run = racesp(2, std::string(command) + " --help", dir.path());
        EXPECT_EQ(run.code, 0) << run.output;
        EXPECT_EQ(run.output.rfind(std::string("usage: racesp ") + command, 0), 0u) << run.output;  // once: rank 0
        EXPECT_EQ(run.output.find("usage:", 1), std::string::npos) << run.output;
        EXPECT_NE(run.output.find("--config FILE"), std::string::npos);
        Result same = racesp(0, std::string("help ") + command, dir.path());
        EXPECT_EQ(same.output, run.output);
    }
    Result run = racesp(0, "attention --help", dir.path());
    for (const char* option : {"--tables", "--planes", "--beta", "--seed", "--normalization", "--causal", "--eps",
                               "--share-planes", "--sp-size", "--device", "--q-dataset", "--k-dataset",
                               "--v-dataset", "--do-dataset", "--backward", "--overwrite", "--quiet", "--metrics"})
        EXPECT_NE(run.output.find(option), std::string::npos) << option;
}

TEST(Options, Version) {
    ScratchDir dir;
    Result run = racesp(2, "--version", dir.path());
    EXPECT_EQ(run.code, 0);
    EXPECT_EQ(run.output, std::string("racesp ") + RACESP_VERSION + "\n");
}

class ConfigFile : public ::testing::Test {
protected:
    void SetUp() override {
        Result gen = racesp(0, "generate --output in.h5 --batch 1 --tokens 16 --heads 1 --dim 4", dir.path());
        ASSERT_EQ(gen.code, 0) << gen.output;
    }
    void write_config(const std::string& text) { std::ofstream(dir / "run.ini") << text; }
    ScratchDir dir;
};

TEST_F(ConfigFile, ValuesAreUsedAndTheCommandLineWins) {
    write_config("# shared settings\n"
                 "tables = 3\n"
                 "planes = 2\n"
                 "causal = true\n"
                 "normalization = bucket\n"
                 "[attention]\n"
                 "beta = 2.5\n"
                 "[generate]\n"
                 "heads = 7\n");
    Result run = racesp(2, "attention --config run.ini --input in.h5 --output a.h5 --planes 5", dir.path());
    ASSERT_EQ(run.code, 0) << run.output;
    EXPECT_EQ(int_attribute(dir / "a.h5", "tables"), 3);   // from the file
    EXPECT_EQ(int_attribute(dir / "a.h5", "planes"), 5);   // the command line wins
    EXPECT_EQ(int_attribute(dir / "a.h5", "causal"), 1);
    EXPECT_EQ(string_attribute(dir / "a.h5", "normalization"), "bucket");
    EXPECT_DOUBLE_EQ(double_attribute(dir / "a.h5", "beta"), 2.5);  // [attention] section

    Result off = racesp(0, "attention --config run.ini --input in.h5 --output b.h5 --causal=false", dir.path());
    ASSERT_EQ(off.code, 0) << off.output;
    EXPECT_EQ(int_attribute(dir / "b.h5", "causal"), 0);
}

TEST_F(ConfigFile, Errors) {
    write_config("tables = 3\ntabels = 4\n");
    Result typo = racesp(2, "attention --config run.ini --input in.h5 --output a.h5", dir.path());
    EXPECT_NE(typo.code, 0);
    ASSERT_EQ(typo.error_lines().size(), 1u) << typo.output;
    EXPECT_NE(typo.error_lines()[0].find("config file 'run.ini': unknown option 'tabels' for 'racesp attention'"),
              std::string::npos);

    write_config("planes = 20\n");
    Result bad = racesp(0, "attention --config run.ini --input in.h5 --output a.h5", dir.path());
    ASSERT_EQ(bad.error_lines().size(), 1u) << bad.output;
    EXPECT_NE(bad.error_lines()[0].find("planes (P) must be in 1..10, got 20"), std::string::npos);

    write_config("[trian]\nplanes = 2\n");
    Result section = racesp(0, "attention --config run.ini --input in.h5 --output a.h5", dir.path());
    ASSERT_EQ(section.error_lines().size(), 1u) << section.output;
    EXPECT_NE(section.error_lines()[0].find("unknown section [trian]"), std::string::npos);

    Result missing = racesp(2, "attention --config nope.ini --input in.h5 --output a.h5", dir.path());
    ASSERT_EQ(missing.error_lines().size(), 1u) << missing.output;
    EXPECT_NE(missing.error_lines()[0].find("cannot read config file 'nope.ini'"), std::string::npos);
    EXPECT_FALSE(fs::exists(dir / "a.h5"));
}

TEST(Options, CountsTakeSuffixes) {
    ScratchDir dir;
    Result run = racesp(0, "generate --output g.h5 --batch 1 --tokens 1.5k --heads 1 --dim 2", dir.path());
    ASSERT_EQ(run.code, 0) << run.output;
    EXPECT_EQ(dataset_dims(dir / "g.h5", "q"), (std::vector<std::uint64_t>{1, 1500, 1, 2}));
    EXPECT_EQ(uint_attribute(dir / "g.h5", "seed"), 0u);
}

TEST(Options, SummaryLineAndQuiet) {
    ScratchDir dir;
    ASSERT_EQ(racesp(0, "generate --output in.h5 --batch 2 --tokens 8 --heads 1 --dim 2 --quiet", dir.path()).code, 0);
    Result run = racesp(2, "attention --input in.h5 --output out.h5 --quiet", dir.path());
    ASSERT_EQ(run.code, 0) << run.output;
    // One summary line from rank 0: tokens, ranks, wall time, tokens/s, peak memory.
    EXPECT_EQ(run.output.find("racesp: attention: 16 tokens (2 x 8), forward, 2 ranks, wall "), 0u) << run.output;
    EXPECT_NE(run.output.find(" tokens/s, peak memory "), std::string::npos);
    EXPECT_NE(run.output.find("per rank (max) -> out.h5\n"), std::string::npos);
    EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 1) << run.output;
}

TEST(Options, BenchPrintsOneJsonLinePerConfiguration) {
    ScratchDir dir;
    Result run = racesp(2, "bench --tokens 2k --heads 2 --dim 16 --both --repeats 3 --warmup 1", dir.path());
    ASSERT_EQ(run.code, 0) << run.output;
    std::istringstream in(run.output);
    std::string line;
    std::vector<nlohmann::json> lines;
    while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
    ASSERT_EQ(lines.size(), 2u) << run.output;
    EXPECT_EQ(lines[0]["causal"], false);
    EXPECT_EQ(lines[1]["causal"], true);
    for (const auto& j : lines) {
        EXPECT_EQ(j["tokens"], 2000);
        EXPECT_EQ(j["machine"]["ranks"], 2);
        EXPECT_EQ(j["times_s"].size(), 3u);
        EXPECT_GT(j["tokens_per_s"].get<double>(), 0);
        for (const char* key : {"median_s", "compute_s", "collective_s", "peak_rss_bytes", "forward_s", "backward_s"})
            EXPECT_TRUE(j.contains(key)) << key;
        EXPECT_TRUE(j["machine"].contains("threads_per_rank"));
    }
    Result weak = racesp(2, "bench --tokens-per-rank 1000 --heads 1 --dim 8 --repeats 1 --warmup 0", dir.path());
    ASSERT_EQ(weak.code, 0) << weak.output;
    nlohmann::json j = nlohmann::json::parse(weak.output);
    EXPECT_EQ(j["tokens"], 2000);
    EXPECT_EQ(j["weak_scaling"], true);
}

TEST(HalfPrecision, ToHalfRoundsToNearestEven) {
    // Reference: the compiler's own float -> _Float16 conversion (round to nearest even).
    std::uint32_t state = 12345;
    for (int i = 0; i < 200000; ++i) {
        state = state * 1664525u + 1013904223u;
        float x;
        std::uint32_t bits = state;
        std::memcpy(&x, &bits, 4);
        if (std::isnan(x)) continue;
        _Float16 h = static_cast<_Float16>(x);
        std::uint16_t expect;
        std::memcpy(&expect, &h, 2);
        ASSERT_EQ(io::to_half(x), expect) << x;
    }
    EXPECT_EQ(io::to_half(0.1f), 0x2e66);
    EXPECT_EQ(io::to_half(65520.0f), 0x7c00);
    EXPECT_EQ(io::to_half(-0.0f), 0x8000);
    EXPECT_TRUE(std::isnan(io::from_half(io::to_half(NAN))));
}

TEST(HalfPrecision, FromHalfIsExactForEveryPattern) {
    for (std::uint32_t h = 0; h < 65536; ++h) {
        _Float16 ref;
        std::uint16_t bits = static_cast<std::uint16_t>(h);
        std::memcpy(&ref, &bits, 2);
        float mine = io::from_half(bits);
        if (std::isnan(static_cast<float>(ref))) {
            EXPECT_TRUE(std::isnan(mine)) << h;
        } else {
            ASSERT_EQ(mine, static_cast<float>(ref)) << h;
            ASSERT_EQ(std::signbit(mine), std::signbit(static_cast<float>(ref))) << h;
        }
    }
}

}  // namespace

}  // namespace racesp::clitest
