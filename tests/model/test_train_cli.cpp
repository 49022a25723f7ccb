// racesp prep and racesp train end to end (the binary, under mpiexec): the token file's layout,
// losses that agree across rank grids, exact resumption from a checkpoint, and one clear error
// for each kind of bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <nlohmann/json.hpp>

#include "harness.hpp"
#include "train_helpers.hpp"

namespace racesp::clitest {
namespace {

// BLAS threads would oversubscribe the shared cores (OpenMP threads are set by the harness).
const int blas_threads = ::setenv("OPENBLAS_NUM_THREADS", "1", 1);

class Train : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_EQ(blas_threads, 0);
        write_text(dir / "a.txt", 30000, 1);
        write_text(dir / "b.txt", 12000, 2);
        Result prep = racesp(0, "prep --input a.txt b.txt --output tokens.h5 --val-fraction 0.1", dir.path());
        ASSERT_EQ(prep.code, 0) << prep.output;
    }
    // A small model: 2 layers, width 16, 2 heads, 64-token windows, 4 sequences per step;
    // options in `extra` replace these defaults.
    Result train(int ranks, const std::string& extra) {
        std::vector<std::pair<std::string, std::string>> options = {
            {"--data", "tokens.h5"}, {"--layers", "2"}, {"--width", "16"}, {"--heads", "2"}, {"--tables", "2"},
            {"--planes", "3"}, {"--seq-len", "64"}, {"--batch", "4"}, {"--lr", "3e-3"}, {"--warmup", "5"},
            {"--quiet", ""}};
        std::istringstream words(extra);
        std::vector<std::string> given{std::istream_iterator<std::string>(words), {}};
        for (std::size_t i = 0; i < given.size(); ++i) {
            std::string value = i + 1 < given.size() && given[i + 1].rfind("--", 0) != 0 ? given[++i] : "";
            const std::string& key = given[value.empty() ? i : i - 1];
            auto same = std::find_if(options.begin(), options.end(), [&](const auto& o) { return o.first == key; });
            if (same != options.end()) same->second = value;
            else options.emplace_back(key, value);
        }
        std::string args = "train";
        for (const auto& [key, value] : options) args += " " + key + (value.empty() ? "" : " " + value);
        return racesp(ranks, args, dir.path(), 120);
    }
    void expect_error(int ranks, const std::string& extra, const std::string& message) {
        Result run = train(ranks, extra);
        EXPECT_NE(run.code, 0) << run.output;
        EXPECT_NE(run.code, 124) << "timed out: " << run.output;
        std::vector<std::string> lines = run.error_lines();
        ASSERT_EQ(lines.size(), 1u) << run.output;
        EXPECT_NE(lines[0].find(message), std::string::npos) << "expected '" << message << "' in: " << lines[0];
        EXPECT_EQ(run.output.find("racesp: rank"), std::string::npos) << run.output;  // not an abort
        EXPECT_EQ(run.output.find("HDF5-DIAG"), std::string::npos) << run.output;
    }
    ScratchDir dir;
};

TEST_F(Train, PrepWritesByteTokens) {
    const std::uint64_t total = fs::file_size(dir / "a.txt") + fs::file_size(dir / "b.txt");
    const std::int64_t val = int_attribute(dir / "tokens.h5", "val_tokens");
    EXPECT_EQ(val, std::llround(0.1 * double(total)));
    EXPECT_EQ(int_attribute(dir / "tokens.h5", "tokens") + val, static_cast<std::int64_t>(total));
    EXPECT_EQ(dataset_dims(dir / "tokens.h5", "tokens"), std::vector<std::uint64_t>{total - std::uint64_t(val)});
    EXPECT_EQ(dataset_type_size(dir / "tokens.h5", "tokens"), 1u);
    EXPECT_EQ(int_attribute(dir / "tokens.h5", "vocab_size"), 256);
    // The first bytes of the stream are the first file's.
    std::vector<float> tokens = read_floats(dir / "tokens.h5", "tokens");
    std::ifstream in(dir / "a.txt", std::ios::binary);
    for (int i = 0; i < 16; ++i) EXPECT_EQ(tokens[static_cast<std::size_t>(i)], float(static_cast<unsigned char>(in.get())));
}

TEST_F(Train, RankGridsAgree) {
    ASSERT_EQ(train(0, "--steps 20 --metrics one.jsonl").code, 0);
    Result sp4 = train(4, "--steps 20 --metrics sp4.jsonl --sp-size 4");
    ASSERT_EQ(sp4.code, 0) << sp4.output;
    Result grid = train(4, "--steps 20 --metrics grid.jsonl --sp-size 2");
    ASSERT_EQ(grid.code, 0) << grid.output;
    std::vector<double> one = losses(dir / "one.jsonl");
    ASSERT_EQ(one.size(), 20u);
    for (const char* name : {"sp4.jsonl", "grid.jsonl"}) {
        std::vector<double> other = losses(dir / name);
        ASSERT_EQ(other.size(), 20u) << name;
        for (std::size_t i = 0; i < one.size(); ++i)
            EXPECT_NEAR(other[i], one[i], 1e-5 * std::abs(one[i])) << name << " step " << i + 1;
    }
    EXPECT_LT(one.back(), one.front());  // it learns
}

TEST_F(Train, ResumeReproducesTheUninterruptedRun) {
    const std::string run = "--steps 60 --val-every 20 --val-batches 1 ";
    ASSERT_EQ(train(2, run + "--metrics full.jsonl").code, 0);
    Result first = train(2, run + "--metrics part.jsonl --stop-at 30 --checkpoint-every 10 --keep 2");
    ASSERT_EQ(first.code, 0) << first.output;
    EXPECT_TRUE(fs::exists(dir / "checkpoints/step-00000030.h5"));
    EXPECT_TRUE(fs::exists(dir / "checkpoints/step-00000020.h5"));
    EXPECT_FALSE(fs::exists(dir / "checkpoints/step-00000010.h5"));  // --keep 2
    fs::create_directory(dir / "again");
    fs::copy_file(dir / "checkpoints/step-00000030.h5", dir / "again/step-00000030.h5");
    Result second = train(2, run + "--metrics part.jsonl --checkpoint-every 10 --keep 2 --resume");
    ASSERT_EQ(second.code, 0) << second.output;
    std::vector<double> full = losses(dir / "full.jsonl"), part = losses(dir / "part.jsonl");
    ASSERT_EQ(full.size(), 60u);
    ASSERT_EQ(part.size(), 60u);
    for (std::size_t i = 30; i < 60; ++i) EXPECT_EQ(part[i], full[i]) << "step " << i + 1;  // exactly

    // Another rank count continues from the same checkpoint (parameters are replicated).
    Result four = train(4, run + "--metrics four.jsonl --sp-size 2 --resume --stop-at 40 --checkpoint-dir again");
    ASSERT_EQ(four.code, 0) << four.output;
    std::vector<double> resumed = losses(dir / "four.jsonl");
    ASSERT_EQ(resumed.size(), 10u);
    for (std::size_t i = 0; i < 10; ++i) EXPECT_NEAR(resumed[i], full[30 + i], 1e-5 * full[30 + i]);
}

TEST_F(Train, RecallTaskFileAndValidationAccuracy) {
    Result gen = racesp(2, "generate --task recall --output recall.h5 --batch 40 --tokens 32 --pairs 3 --val-batch 4",
                        dir.path());
    ASSERT_EQ(gen.code, 0) << gen.output;
    EXPECT_EQ(dataset_dims(dir / "recall.h5", "tokens"), std::vector<std::uint64_t>{40 * 32 + 1});
    EXPECT_EQ(dataset_dims(dir / "recall.h5", "val_tokens"), std::vector<std::uint64_t>{4 * 32 + 1});
    std::vector<float> val = read_floats(dir / "recall.h5", "val_tokens"),
                       scored = read_floats(dir / "recall.h5", "val_scored");
    ASSERT_EQ(scored.size(), val.size());
    for (int s = 0; s < 4; ++s) {
        const float* seq = val.data() + 32 * s;
        const float* marks = scored.data() + 32 * s;
        // Three pair tokens first, each query key's value matches its pair, answers are marked.
        for (int q = 0; q < 3; ++q) {
            const int key = int(seq[26 + 2 * q]) - 'A', value = int(seq[27 + 2 * q]) - '0';
            EXPECT_EQ(marks[27 + 2 * q], 1.0f);
            EXPECT_EQ(marks[26 + 2 * q], 0.0f);
            bool found = false;
            for (int p = 0; p < 3; ++p) found = found || int(seq[p]) == 128 + 10 * key + value;
            EXPECT_TRUE(found) << "sequence " << s << " query " << q;
        }
        EXPECT_EQ(seq[10], float('.'));
    }
    // Training reads it with --seq-len = the sequence length and reports the accuracy on the answers.
    Result run = train(4, "--data recall.h5 --seq-len 32 --steps 2 --val-every 2 --metrics recall.jsonl");
    ASSERT_EQ(run.code, 0) << run.output;
    std::ifstream in(dir / "recall.jsonl");
    std::string line, last;
    while (std::getline(in, line)) last = line;
    const double accuracy = nlohmann::json::parse(last).at("val_accuracy").get<double>();
    EXPECT_GE(accuracy, 0.0);
    EXPECT_LE(accuracy, 1.0);
    EXPECT_NE(run.output.find("accuracy"), std::string::npos) << run.output;
}

TEST_F(Train, WrongTokenType) {
    write_dataset(dir / "floats.h5", "tokens", {1000}, std::vector<double>(1000, 1.0), FileType::float32);
    Result run = racesp(2, "train --data floats.h5 --seq-len 16 --batch 2 --steps 1", dir.path(), 60);
    EXPECT_NE(run.code, 0);
    ASSERT_EQ(run.error_lines().size(), 1u) << run.output;
    EXPECT_NE(run.error_lines()[0].find("dataset 'tokens' in token file 'floats.h5' has type float32; expected uint8 "
                                        "or uint16 token ids"),
              std::string::npos)
        << run.output;
}

TEST_F(Train, TooFewTokensForOneWindow) {
    expect_error(2, "--seq-len 100000 --steps 1",
                 "tokens in 'tokens'; one window of --seq-len 100000 needs 100001");
}

TEST_F(Train, CheckpointOfAnotherConfiguration) {
    ASSERT_EQ(train(0, "--steps 2 --checkpoint-every 2").code, 0);
    expect_error(2, "--steps 4 --resume --width 32",
                 "checkpoint 'checkpoints/step-00000002.h5' is from another configuration: width 16 there, 32 here");
}

TEST_F(Train, CorruptCheckpoint) {
    ASSERT_EQ(train(0, "--steps 2 --checkpoint-every 2").code, 0);
    const fs::path ckpt = dir / "checkpoints/step-00000002.h5";
    fs::resize_file(ckpt, fs::file_size(ckpt) / 2);
    expect_error(2, "--steps 4 --resume", "checkpoint 'checkpoints/step-00000002.h5'");
    // Damaged in the middle rather than cut short: still one clear line.
    std::ofstream(ckpt, std::ios::trunc) << "not a checkpoint";
    expect_error(2, "--steps 4 --resume", "checkpoint 'checkpoints/step-00000002.h5' is not an HDF5 file");
}

TEST_F(Train, ConfigFileSection) {
    std::ofstream(dir / "run.ini") << "steps = 3\n[train]\nlayers = 1\nwidth = 8\n[attention]\nbeta = 2\n";
    Result run = racesp(0, "train --data tokens.h5 --seq-len 16 --batch 2 --config run.ini --metrics m.jsonl --quiet",
                        dir.path());
    ASSERT_EQ(run.code, 0) << run.output;
    EXPECT_NE(run.output.find("steps 1..3 of 3"), std::string::npos) << run.output;
    EXPECT_EQ(losses(dir / "m.jsonl").size(), 3u);
}

// A step whose activations cannot fit in the node's memory stops before it allocates them, with
// what it needs and what is available (not the out-of-memory killer halfway through). 2^18
// sequences of 16384 tokens need about 15 TiB at this width: more than any test machine has.
TEST_F(Train, ShardBeyondHostMemory) {
    expect_error(1, "--seq-len 16384 --batch 262144", "a shard of 262144 x 16384 tokens needs ");
    expect_error(2, "--seq-len 16384 --batch 262144 --sp-size 2",
                 "a shard of 262144 x 8192 tokens needs ");
    Result run = train(2, "--seq-len 16384 --batch 262144 --sp-size 2");
    const std::string line = run.error_lines().empty() ? "" : run.error_lines()[0];
    EXPECT_NE(line.find("for the 2 ranks on this node), more than the "), std::string::npos) << run.output;
    EXPECT_NE(line.find("use a shorter --seq-len, a smaller --batch, or more nodes for the ranks"), std::string::npos)
        << run.output;
}

TEST_F(Train, BadOptions) {
    expect_error(2, "--width 10 --heads 4", "--width 10 must be a multiple of --heads 4");
    expect_error(4, "--sp-size 3", "--sp-size 3 must divide the number of ranks (4)");
    expect_error(4, "--sp-size 1 --batch 2", "--batch 2 is smaller than the 4 data-parallel groups");
}

}  // namespace
}  // namespace racesp::clitest
