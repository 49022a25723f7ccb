// generate -> attention -> read back: the files hold what the in-memory library computes on the
// same data, at any rank count, from float32, float16 and float64 inputs.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "harness.hpp"
#include "racesp/attention.hpp"

namespace racesp::clitest {

namespace {

struct Expected {
    std::vector<float> o, dq, dk, dv;
    double dbeta = 0;
    Planes planes;
};

// The library's single-process result on the input file's data (as HDF5 converts it to float).
Expected library_result(const fs::path& input, const AttentionConfig& config, bool backward) {
    Shape shape;
    std::vector<float> q = read_floats(input, "q", &shape), k = read_floats(input, "k"), v = read_floats(input, "v");
    Expected e{{}, {}, {}, {}, 0, Planes(config, shape.heads, shape.dim)};
    e.o.resize(q.size());
    attention_forward(config, e.planes, ConstTensor(q.data(), shape), ConstTensor(k.data(), shape),
                      ConstTensor(v.data(), shape), MutTensor(e.o.data(), shape));
    if (backward) {
        std::vector<float> dout = read_floats(input, "do");
        e.dq.resize(q.size());
        e.dk.resize(q.size());
        e.dv.resize(q.size());
        e.dbeta = attention_backward(config, e.planes, ConstTensor(q.data(), shape), ConstTensor(k.data(), shape),
                                     ConstTensor(v.data(), shape), ConstTensor(dout.data(), shape),
                                     MutTensor(e.dq.data(), shape), MutTensor(e.dk.data(), shape),
                                     MutTensor(e.dv.data(), shape));
    }
    return e;
}

void expect_matches(const fs::path& output, const Expected& e, bool backward, double tolerance = 1e-6) {
    EXPECT_LE(relative_error(read_floats(output, "o"), e.o), tolerance);
    EXPECT_EQ(read_floats(output, "planes"), e.planes.values());
    if (backward) {
        EXPECT_LE(relative_error(read_floats(output, "dq"), e.dq), tolerance);
        EXPECT_LE(relative_error(read_floats(output, "dk"), e.dk), tolerance);
        EXPECT_LE(relative_error(read_floats(output, "dv"), e.dv), tolerance);
        EXPECT_NEAR(double_attribute(output, "dbeta"), e.dbeta, tolerance * std::max(1.0, std::fabs(e.dbeta)));
    }
}

struct Case {
    const char* name;
    int ranks;
    const char* options;  // attention options
    AttentionConfig config;
};

AttentionConfig make_config(int tables, int planes, double beta, Normalization n, bool causal, std::uint64_t seed,
                            bool share = false) {
    AttentionConfig c;
    c.tables = tables;
    c.planes = planes;
    c.beta = beta;
    c.normalization = n;
    c.causal = causal;
    c.seed = seed;
    c.share_planes = share;
    return c;
}

class RoundTrip : public ::testing::TestWithParam<Case> {};

TEST_P(RoundTrip, OutputEqualsLibraryResult) {
    const Case& c = GetParam();
    ScratchDir dir;
    Result gen = racesp(c.ranks, "generate --output in.h5 --batch 2 --tokens 37 --heads 2 --dim 5 --seed 7 --with-grad",
                     dir.path());
    ASSERT_EQ(gen.code, 0) << gen.output;
    Result att = racesp(c.ranks, std::string("attention --input in.h5 --output out.h5 --backward ") + c.options, dir.path());
    ASSERT_EQ(att.code, 0) << att.output;
    EXPECT_NE(att.output.find("racesp: attention: 74 tokens"), std::string::npos) << att.output;
    expect_matches(dir / "out.h5", library_result(dir / "in.h5", c.config, true), true);
    EXPECT_EQ(dir.entries(), (std::vector<std::string>{"in.h5", "out.h5"}));  // no temporary left
}

INSTANTIATE_TEST_SUITE_P(
    Configs, RoundTrip,
    ::testing::Values(
        Case{"kernel_noncausal_1rank", 0, "", make_config(4, 4, 1.0, Normalization::kernel, false, 0)},
        Case{"kernel_causal_2ranks", 2, "--causal --tables 3 --planes 2 --seed 11",
             make_config(3, 2, 1.0, Normalization::kernel, true, 11)},
        Case{"bucket_noncausal_3ranks", 3, "--normalization bucket --beta 2.5 --eps 1e-4",
             [] { auto c = make_config(4, 4, 2.5, Normalization::bucket, false, 0); c.eps = 1e-4; return c; }()},
        Case{"bucket_causal_2ranks_dp", 2, "--normalization bucket --causal --sp-size 1 --share-planes",
             make_config(4, 4, 1.0, Normalization::bucket, true, 0, true)},
        Case{"kernel_causal_4ranks_sp2", 4, "--causal --sp-size 2 --planes 5 --tables 2",
             make_config(2, 5, 1.0, Normalization::kernel, true, 0)},
        // 4 data-parallel groups for 2 sequences: two ranks hold nothing.
        Case{"kernel_noncausal_4ranks_dp_empty", 4, "--sp-size 1", make_config(4, 4, 1.0, Normalization::kernel, false, 0)}),
    [](const ::testing::TestParamInfo<Case>& p) { return std::string(p.param.name); });

TEST(RoundTrip, OneAndThreeRanksWriteTheSameFiles) {
    ScratchDir dir;
    ASSERT_EQ(racesp(0, "generate --output a.h5 --batch 1 --tokens 50 --heads 3 --dim 4 --with-grad", dir.path()).code, 0);
    ASSERT_EQ(racesp(3, "generate --output b.h5 --batch 1 --tokens 50 --heads 3 --dim 4 --with-grad", dir.path()).code, 0);
    for (const char* name : {"q", "k", "v", "do"}) EXPECT_EQ(read_floats(dir / "a.h5", name), read_floats(dir / "b.h5", name)) << name;

    Result one = racesp(0, "attention --input a.h5 --output o1.h5 --causal --backward", dir.path());
    ASSERT_EQ(one.code, 0) << one.output;
    Result three = racesp(3, "attention --input a.h5 --output o3.h5 --causal --backward", dir.path());
    ASSERT_EQ(three.code, 0) << three.output;
    for (const char* name : {"o", "dq", "dk", "dv"})
        EXPECT_LE(relative_error(read_floats(dir / "o3.h5", name), read_floats(dir / "o1.h5", name)), 1e-6) << name;
    EXPECT_NEAR(double_attribute(dir / "o3.h5", "dbeta"), double_attribute(dir / "o1.h5", "dbeta"),
                1e-6 * std::max(1.0, std::fabs(double_attribute(dir / "o1.h5", "dbeta"))));
}

TEST(RoundTrip, MoreRanksThanTokens) {
    ScratchDir dir;
    ASSERT_EQ(racesp(0, "generate --output in.h5 --batch 1 --tokens 2 --heads 1 --dim 3 --with-grad", dir.path()).code, 0);
    Result att = racesp(3, "attention --input in.h5 --output out.h5 --causal --backward", dir.path());
    ASSERT_EQ(att.code, 0) << att.output;
    AttentionConfig config;
    config.causal = true;
    expect_matches(dir / "out.h5", library_result(dir / "in.h5", config, true), true);
}

class InputTypes : public ::testing::TestWithParam<const char*> {};

TEST_P(InputTypes, AcceptedAndConvertedLikeHdf5Does) {
    const std::string dtype = GetParam();
    ScratchDir dir;
    Result gen = racesp(2, "generate --output in.h5 --batch 1 --tokens 300 --heads 2 --dim 6 --with-grad --dtype " + dtype,
                     dir.path());
    ASSERT_EQ(gen.code, 0) << gen.output;
    EXPECT_EQ(dataset_type_size(dir / "in.h5", "q"), dtype == "float16" ? 2u : dtype == "float64" ? 8u : 4u);
    Result att = racesp(2, "attention --input in.h5 --output out.h5 --backward", dir.path());
    ASSERT_EQ(att.code, 0) << att.output;
    // The reference reads the file through HDF5's own conversion in this process; racesp uses
    // its registered float16 conversion, which must agree exactly.
    expect_matches(dir / "out.h5", library_result(dir / "in.h5", AttentionConfig{}, true), true);
    // Written data are the same values as float32 generation, rounded to the file type.
    ASSERT_EQ(racesp(0, "generate --output ref.h5 --batch 1 --tokens 300 --heads 2 --dim 6", dir.path()).code, 0);
    std::vector<float> mine = read_floats(dir / "in.h5", "q"), ref = read_floats(dir / "ref.h5", "q");
    EXPECT_LE(relative_error(mine, ref), dtype == "float16" ? 1e-3 : 1e-7);
}

INSTANTIATE_TEST_SUITE_P(Types, InputTypes, ::testing::Values("float32", "float16", "float64"));

TEST(RoundTrip, ForeignFloat16AndFloat64Files) {
    // Files written by another program (as h5py would): float16 q, float64 k, float32 v.
    ScratchDir dir;
    std::vector<std::uint64_t> dims = {1, 20, 2, 3};
    std::vector<double> values(120);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = std::sin(0.37 * double(i)) * 2.0;
    write_dataset(dir / "in.h5", "q", dims, values, FileType::float16);
    write_dataset(dir / "in.h5", "k", dims, values, FileType::float64);
    write_dataset(dir / "in.h5", "v", dims, values, FileType::float32);
    Result att = racesp(2, "attention --input in.h5 --output out.h5 --causal", dir.path());
    ASSERT_EQ(att.code, 0) << att.output;
    AttentionConfig config;
    config.causal = true;
    expect_matches(dir / "out.h5", library_result(dir / "in.h5", config, false), false);
}

TEST(RoundTrip, AttributesAndLayout) {
    ScratchDir dir;
    ASSERT_EQ(racesp(0, "generate --output in.h5 --batch 3 --tokens 10 --heads 2 --dim 4 --with-grad", dir.path()).code, 0);
    Result att = racesp(2, "attention --input in.h5 --output out.h5 --backward --tables 3 --planes 2 --beta 1.5 "
                        "--eps 0.001 --seed 42 --causal --normalization bucket --sp-size 1 --metrics m.json",
                     dir.path());
    ASSERT_EQ(att.code, 0) << att.output;
    const fs::path out = dir / "out.h5";
    EXPECT_EQ(int_attribute(out, "tables"), 3);
    EXPECT_EQ(int_attribute(out, "planes"), 2);
    EXPECT_DOUBLE_EQ(double_attribute(out, "beta"), 1.5);
    EXPECT_DOUBLE_EQ(double_attribute(out, "eps"), 0.001);
    EXPECT_EQ(uint_attribute(out, "seed"), 42u);
    EXPECT_EQ(int_attribute(out, "causal"), 1);
    EXPECT_EQ(string_attribute(out, "normalization"), "bucket");
    EXPECT_EQ(int_attribute(out, "ranks"), 2);
    EXPECT_EQ(int_attribute(out, "sp_size"), 1);
    EXPECT_EQ(string_attribute(out, "racesp_version"), RACESP_VERSION);
    EXPECT_TRUE(has_attribute(out, "dbeta"));
    for (const char* name : {"o", "dq", "dk", "dv"})
        EXPECT_EQ(dataset_dims(out, name), (std::vector<std::uint64_t>{3, 10, 2, 4})) << name;
    EXPECT_EQ(dataset_dims(out, "planes"), (std::vector<std::uint64_t>{2, 3, 2, 4}));
    for (const char* name : {"o", "dq", "planes"}) EXPECT_EQ(dataset_type_size(out, name), 4u);

    std::ifstream in(dir / "m.json");
    nlohmann::json m = nlohmann::json::parse(in);
    EXPECT_EQ(m["total_tokens"], 30);
    EXPECT_EQ(m["machine"]["ranks"], 2);
    for (const char* key : {"wall_s", "tokens_per_s", "peak_rss_bytes", "compute_s", "collective_s", "read_s", "write_s"})
        EXPECT_TRUE(m.contains(key)) << key;
    EXPECT_GT(m["peak_rss_bytes"].get<double>(), 1e6);

    // Forward only: no gradients, no dbeta.
    Result fwd = racesp(0, "attention --input in.h5 --output fwd.h5", dir.path());
    ASSERT_EQ(fwd.code, 0) << fwd.output;
    EXPECT_FALSE(has_dataset(dir / "fwd.h5", "dq"));
    EXPECT_FALSE(has_attribute(dir / "fwd.h5", "dbeta"));
    EXPECT_EQ(int_attribute(dir / "fwd.h5", "causal"), 0);
    EXPECT_EQ(string_attribute(dir / "fwd.h5", "normalization"), "kernel");
}

TEST(RoundTrip, OverwriteReplacesTheOutput) {
    ScratchDir dir;
    ASSERT_EQ(racesp(0, "generate --output in.h5 --batch 1 --tokens 10 --heads 1 --dim 4", dir.path()).code, 0);
    ASSERT_EQ(racesp(0, "attention --input in.h5 --output out.h5 --tables 2", dir.path()).code, 0);
    Result again = racesp(2, "attention --input in.h5 --output out.h5 --tables 5 --overwrite", dir.path());
    ASSERT_EQ(again.code, 0) << again.output;
    EXPECT_EQ(int_attribute(dir / "out.h5", "tables"), 5);
    EXPECT_EQ(dir.entries(), (std::vector<std::string>{"in.h5", "out.h5"}));
}

TEST(RoundTrip, CustomDatasetNames) {
    ScratchDir dir;
    Result gen = racesp(0, "generate --output in.h5 --batch 1 --tokens 12 --heads 1 --dim 4 --with-grad "
                        "--q-dataset Q --k-dataset K --v-dataset V --do-dataset G",
                     dir.path());
    ASSERT_EQ(gen.code, 0) << gen.output;
    EXPECT_TRUE(has_dataset(dir / "in.h5", "Q"));
    Result att = racesp(2, "attention --input in.h5 --output out.h5 --backward --q-dataset Q --k-dataset K "
                        "--v-dataset V --do-dataset G",
                     dir.path());
    ASSERT_EQ(att.code, 0) << att.output;
    EXPECT_TRUE(has_dataset(dir / "out.h5", "dv"));
}

}  // namespace

}  // namespace racesp::clitest
