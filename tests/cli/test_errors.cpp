// Every user error: one "racesp: error: ..." line (from rank 0 only), a non-zero exit from the
// job, no rank aborting, no output file or temporary file left, the input untouched.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>

#include "harness.hpp"

namespace racesp::clitest {

namespace {

// Runs `args` at `ranks` in `dir` and checks the failure: exit non-zero, exactly one error
// line containing `message`, no abort, no stack trace, no HDF5 diagnostics, and afterwards
// exactly the files `left` in the directory.
void expect_error(const ScratchDir& dir, int ranks, const std::string& args, const std::string& message,
                  std::vector<std::string> left) {
    Result run = racesp(ranks, args, dir.path(), 60);
    EXPECT_NE(run.code, 0) << run.output;
    EXPECT_NE(run.code, 124) << "timed out: " << run.output;
    std::vector<std::string> lines = run.error_lines();
    ASSERT_EQ(lines.size(), 1u) << run.output;
    EXPECT_NE(lines[0].find(message), std::string::npos) << "expected '" << message << "' in: " << lines[0];
    EXPECT_EQ(run.output.find("racesp: rank"), std::string::npos) << run.output;  // not an abort
    EXPECT_EQ(run.output.find("HDF5-DIAG"), std::string::npos) << run.output;
    EXPECT_EQ(run.output.find("terminate called"), std::string::npos) << run.output;
    EXPECT_EQ(run.output.find("Sanitizer"), std::string::npos) << run.output;  // debug builds
    EXPECT_EQ(run.output.find("runtime error"), std::string::npos) << run.output;
    std::sort(left.begin(), left.end());
    EXPECT_EQ(dir.entries(), left) << run.output;
}

// An input with q, k, v, do [2, 40, 2, 3].
class Errors : public ::testing::Test {
protected:
    void SetUp() override {
        Result gen = racesp(0, "generate --output in.h5 --batch 2 --tokens 40 --heads 2 --dim 3 --with-grad", dir.path());
        ASSERT_EQ(gen.code, 0) << gen.output;
    }
    ScratchDir dir;
};

TEST_F(Errors, MissingInputFile) {
    expect_error(dir, 2, "attention --input nope.h5 --output out.h5", "input file 'nope.h5' does not exist", {"in.h5"});
}

TEST_F(Errors, InputNotHdf5) {
    std::ofstream(dir / "text.h5") << "not hdf5\n";
    expect_error(dir, 2, "attention --input text.h5 --output out.h5", "'text.h5' is not an HDF5 file",
                 {"in.h5", "text.h5"});
}

TEST_F(Errors, MissingDataset) {
    expect_error(dir, 2, "attention --input in.h5 --output out.h5 --k-dataset keys",
                 "input 'in.h5' has no dataset 'keys' (it has: do, k, q, v)", {"in.h5"});
}

TEST_F(Errors, WrongRank) {
    write_dataset(dir / "in.h5", "q3", {2, 40, 6}, std::vector<double>(480, 0.5), FileType::float32);
    expect_error(dir, 2, "attention --input in.h5 --output out.h5 --q-dataset q3",
                 "dataset 'q3' in 'in.h5' has 3 dimensions [2, 40, 6]; expected 4", {"in.h5"});
}

TEST_F(Errors, NotAFloatType) {
    write_dataset(dir / "in.h5", "qi", {2, 40, 2, 3}, std::vector<double>(480, 1), FileType::int32);
    expect_error(dir, 2, "attention --input in.h5 --output out.h5 --q-dataset qi",
                 "dataset 'qi' in 'in.h5' has an integer type; expected float16, float32 or float64", {"in.h5"});
}

TEST_F(Errors, MismatchedShapes) {
    write_dataset(dir / "in.h5", "v2", {2, 39, 2, 3}, std::vector<double>(468, 0.5), FileType::float32);
    expect_error(dir, 3, "attention --input in.h5 --output out.h5 --v-dataset v2",
                 "datasets 'q' [2, 40, 2, 3] and 'v2' [2, 39, 2, 3] in 'in.h5' have different shapes", {"in.h5"});
}

TEST_F(Errors, DoAbsentWithBackward) {
    expect_error(dir, 2, "attention --input in.h5 --output out.h5 --backward --do-dataset grad",
                 "input 'in.h5' has no dataset 'grad', which --backward needs", {"in.h5"});
}

TEST_F(Errors, NaNAndInfReportTheGloballyFirstIndex) {
    // v holds an Inf at [1, 3, 0, 0] (read by rank 0 of 3) and a NaN at [0, 35, 1, 2] (rank 2):
    // in [b, t, h, d] order the NaN comes first.
    std::vector<float> v = read_floats(dir / "in.h5", "v");
    auto at = [](int b, int t, int h, int d) { return static_cast<std::size_t>(((b * 40 + t) * 2 + h) * 3 + d); };
    std::vector<double> bad(v.begin(), v.end());
    bad[at(1, 3, 0, 0)] = std::numeric_limits<double>::infinity();
    bad[at(0, 35, 1, 2)] = std::numeric_limits<double>::quiet_NaN();
    write_dataset(dir / "in.h5", "vbad", {2, 40, 2, 3}, bad, FileType::float32);
    expect_error(dir, 3, "attention --input in.h5 --output out.h5 --v-dataset vbad",
                 "dataset 'vbad' in 'in.h5' has a non-finite value (NaN or Inf) at [b, t, h, d] = [0, 35, 1, 2]",
                 {"in.h5"});
}

TEST_F(Errors, Float64BeyondFloat32Range) {
    std::vector<double> big(480, 0.25);
    big[7] = 1e300;
    write_dataset(dir / "in.h5", "kbig", {2, 40, 2, 3}, big, FileType::float64);
    expect_error(dir, 2, "attention --input in.h5 --output out.h5 --k-dataset kbig",
                 "dataset 'kbig' in 'in.h5' has a non-finite value (NaN, Inf, or beyond the float32 range) at "
                 "[b, t, h, d] = [0, 1, 0, 1]",
                 {"in.h5"});
}

TEST_F(Errors, OutputIsTheInput) {
    expect_error(dir, 2, "attention --input in.h5 --output in.h5 --overwrite", "output 'in.h5' is the input file",
                 {"in.h5"});
    fs::create_directory(dir / "sub");
    expect_error(dir, 2, "attention --input in.h5 --output sub/../in.h5 --overwrite",
                 "output 'sub/../in.h5' is the input file", {"in.h5", "sub"});
    fs::create_symlink(dir / "in.h5", dir / "link.h5");
    expect_error(dir, 2, "attention --input link.h5 --output in.h5 --overwrite", "is the input file",
                 {"in.h5", "link.h5", "sub"});
}

TEST_F(Errors, ExistingOutputWithoutOverwriteIsLeftAlone) {
    std::ofstream(dir / "out.h5") << "precious";
    expect_error(dir, 2, "attention --input in.h5 --output out.h5",
                 "output 'out.h5' already exists (use --overwrite to replace it)", {"in.h5", "out.h5"});
    std::ifstream in(dir / "out.h5");
    std::string text;
    in >> text;
    EXPECT_EQ(text, "precious");
}

TEST_F(Errors, MetricsFileMustNotBeAnInputOrOutput) {
    expect_error(dir, 2, "attention --input in.h5 --output out.h5 --metrics ./in.h5",
                 "--metrics './in.h5' is also 'in.h5'; choose another file", {"in.h5"});
    expect_error(dir, 0, "attention --input in.h5 --output out.h5 --metrics missing/m.json",
                 "--metrics: directory", {"in.h5"});
}

TEST_F(Errors, OutputIsADirectory) {
    fs::create_directory(dir / "out.h5");
    expect_error(dir, 2, "attention --input in.h5 --output out.h5 --overwrite", "output 'out.h5' is a directory",
                 {"in.h5", "out.h5"});
}

TEST_F(Errors, UnwritableOutputDirectory) {
    expect_error(dir, 2, "attention --input in.h5 --output missing/out.h5", "does not exist", {"in.h5"});
    // /proc takes no new files, even from root.
    expect_error(dir, 2, "attention --input in.h5 --output /proc/racesp-out.h5",
                 "cannot create a file in output directory '/proc'", {"in.h5"});
    if (::geteuid() != 0) {
        fs::create_directory(dir / "ro");
        fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
        expect_error(dir, 2, "attention --input in.h5 --output ro/out.h5",
                     "cannot create a file in output directory", {"in.h5", "ro"});
        EXPECT_TRUE(fs::is_empty(dir / "ro"));
    }
}

TEST_F(Errors, BadOptionValues) {
    const std::vector<std::string> only = {"in.h5"};
    const std::string base = "attention --input in.h5 --output out.h5 ";
    expect_error(dir, 2, base + "--planes 11", "planes (P) must be in 1..10, got 11", only);
    expect_error(dir, 2, base + "--planes 0", "planes (P) must be in 1..10, got 0", only);
    expect_error(dir, 2, base + "--tables 0", "tables (L) must be at least 1", only);
    expect_error(dir, 2, base + "--beta 0", "beta must be a finite number > 0", only);
    expect_error(dir, 0, base + "--beta=-2", "beta must be a finite number > 0", only);
    expect_error(dir, 0, base + "--eps=-1", "eps must be a finite number >= 0", only);
    expect_error(dir, 0, base + "--planes four", "the argument ('four') for option '--planes' is invalid", only);
    expect_error(dir, 0, base + "--normalization softmax", "normalization must be 'kernel' or 'bucket'", only);
    expect_error(dir, 0, base + "--seed -1", "the argument ('-1') for option '--seed' is invalid", only);
    expect_error(dir, 2, base + "--sp-size 3", "--sp-size 3 must divide the number of ranks (2)", only);
    expect_error(dir, 0, base + "--device tpu", "device must be 'cpu' or 'cuda'", only);
    expect_error(dir, 0, base + "--causal=maybe", "the argument ('maybe') for option '--causal' is invalid", only);
}

TEST_F(Errors, UnknownOptionsAndArguments) {
    const std::vector<std::string> only = {"in.h5"};
    expect_error(dir, 2, "attention --input in.h5 --output out.h5 --tabels 3", "unrecognised option '--tabels'", only);
    expect_error(dir, 0, "attention --input in.h5 --output out.h5 --tab 3", "unrecognised option '--tab'", only);
    expect_error(dir, 0, "attention --input in.h5 --output out.h5 extra", "unexpected argument 'extra'", only);
    expect_error(dir, 0, "attention --output out.h5", "the option '--input' is required but missing", only);
    expect_error(dir, 2, "attend --input in.h5", "unknown command 'attend'", only);
    expect_error(dir, 0, "", "no command given", only);
    expect_error(dir, 0, "help nothing", "unknown command 'nothing'", only);
}

TEST_F(Errors, GenerateErrors) {
    const std::vector<std::string> only = {"in.h5"};
    const std::string base = "generate --output g.h5 --batch 1 --heads 1 --dim 2 ";
    expect_error(dir, 2, base + "--tokens 0", "--tokens must be at least 1, got 0", only);
    expect_error(dir, 0, base + "--tokens 1x", "the argument ('1x') for option '--tokens' is invalid", only);
    expect_error(dir, 0, base + "--tokens 10 --dtype int8", "dtype must be float32, float16 or float64", only);
    expect_error(dir, 2, "generate --output in.h5 --batch 1 --heads 1 --dim 2 --tokens 5",
                 "output 'in.h5' already exists", only);
    expect_error(dir, 0, "generate --output g.h5 --batch 1 --heads 1 --tokens 5", "'--dim' is required", only);
    // Fails after the output file was created: the temporary file goes too.
    expect_error(dir, 3, "generate --output g.h5 --batch 1 --heads 1 --dim 2 --tokens 50 --q-dataset x --k-dataset x",
                 "cannot create dataset 'x' in 'g.h5': name already exists", only);
}

TEST_F(Errors, BenchErrors) {
    const std::vector<std::string> only = {"in.h5"};
    expect_error(dir, 2, "bench --tokens 100 --repeats 0", "--repeats must be at least 1", only);
    expect_error(dir, 0, "bench --tokens 100 --planes 12", "planes (P) must be in 1..10", only);
    // No GPU visible (so that this holds on GPU hosts too): the CUDA build's "no CUDA device is
    // visible", or "built without the CUDA backend".
    ASSERT_EQ(::setenv("CUDA_VISIBLE_DEVICES", "", 1), 0);
    expect_error(dir, 0, "bench --device cuda --tokens 100", "--device cuda", only);
    ASSERT_EQ(::unsetenv("CUDA_VISIBLE_DEVICES"), 0);
    expect_error(dir, 2, "bench --tokens 100 --dtype bf16", "--dtype bf16 needs --device cuda (the CPU engine computes in float32)",
                 only);
    expect_error(dir, 0, "bench --tokens 100 --max-tokens", "--max-tokens needs --device cuda", only);
}

TEST_F(Errors, InputIsNeverModified) {
    auto before = fs::last_write_time(dir / "in.h5");
    auto size = fs::file_size(dir / "in.h5");
    fs::permissions(dir / "in.h5", fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
    Result run = racesp(2, "attention --input in.h5 --output out.h5 --backward", dir.path());
    EXPECT_EQ(run.code, 0) << run.output;
    EXPECT_EQ(fs::last_write_time(dir / "in.h5"), before);
    EXPECT_EQ(fs::file_size(dir / "in.h5"), size);
}

}  // namespace

}  // namespace racesp::clitest
