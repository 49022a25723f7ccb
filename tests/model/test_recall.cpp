// The recall task learned across shards (issue 9): `racesp generate --task recall` writes
// sequences whose key-value pairs all lie on the first rank's shard and whose queries lie on the
// last two ranks' shards, and a 2-layer model trained by `racesp train` on 4 ranks per sequence
// (sp 4) answers at least 95% of the validation queries. The answer of every query lives only on
// another rank, so it can only come through the RACE states that cross ranks.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include <nlohmann/json.hpp>

#include "harness.hpp"

namespace racesp::clitest {
namespace {

constexpr int ranks = 4;
constexpr int seq_len = 16;        // 4 tokens per rank
constexpr int pairs = 4;           // tokens 0..3 (rank 0); dots 4..7 (rank 1); queries 8..15 (ranks 2, 3)
constexpr int val_sequences = 128;  // 512 scored answers
constexpr int steps = 1000;

TEST(Recall, TwoLayersLearnItAcrossFourRanks) {
    ScratchDir dir;
    Result gen = racesp(0,
                        "generate --task recall --output recall.h5 --batch 20000 --tokens " + std::to_string(seq_len) +
                            " --pairs " + std::to_string(pairs) + " --val-batch " + std::to_string(val_sequences) +
                            " --seed 0 --quiet",
                        dir.path());
    ASSERT_EQ(gen.code, 0) << gen.output;

    // Where the answers lie: each scored token is the value after a query key; its pair (the
    // one token 128 + 10 key + value) must be earlier in the sequence and on another rank than
    // both the query key (whose prediction is scored) and the answer.
    const std::vector<float> val = read_floats(dir / "recall.h5", "val_tokens"),
                             scored = read_floats(dir / "recall.h5", "val_scored");
    ASSERT_EQ(val.size(), std::size_t{val_sequences * seq_len + 1});
    ASSERT_EQ(scored.size(), val.size());
    const int per_rank = seq_len / ranks;
    int answers = 0;
    for (int s = 0; s < val_sequences; ++s) {
        const float* seq = val.data() + s * seq_len;
        for (int t = 0; t < seq_len; ++t) {
            if (scored[static_cast<std::size_t>(s * seq_len + t)] == 0) continue;
            ASSERT_GE(t, 1);
            const int key = int(seq[t - 1]) - 'A', value = int(seq[t]) - '0';
            ASSERT_TRUE(key >= 0 && key < 12 && value >= 0 && value < 10) << "sequence " << s << " token " << t;
            int pair = -1;
            for (int j = 0; j < seq_len; ++j)
                if (int(seq[j]) == 128 + 10 * key + value) pair = j;
            ASSERT_GE(pair, 0) << "no pair for the query at sequence " << s << " token " << t - 1;
            EXPECT_LT(pair, t - 1);
            EXPECT_NE(pair / per_rank, (t - 1) / per_rank) << "sequence " << s << ": pair " << pair << ", query " << t - 1;
            EXPECT_NE(pair / per_rank, t / per_rank) << "sequence " << s << ": pair " << pair << ", answer " << t;
            ++answers;
        }
    }
    EXPECT_EQ(answers, val_sequences * pairs);
    ASSERT_GE(answers, 200);

    // Validation covers every validation sequence: 4 batches of 32.
    Result run = racesp(ranks,
                        "train --data recall.h5 --seq-len " + std::to_string(seq_len) +
                            " --sp-size 4 --layers 2 --width 64 --heads 4 --tables 8 --planes 4 --beta 2 --batch 32"
                            " --lr 1e-3 --warmup 50 --steps " + std::to_string(steps) +
                            " --seed 0 --val-every 250 --val-batches 4 --metrics recall.jsonl --quiet",
                        dir.path(), 330);
    ASSERT_EQ(run.code, 0) << run.output;
    EXPECT_NE(run.output.find("4 ranks (sp 4 x dp 1)"), std::string::npos) << run.output;

    std::ifstream in(dir / "recall.jsonl");
    std::string line;
    std::vector<std::pair<int, double>> curve;
    while (std::getline(in, line)) {
        const nlohmann::json j = nlohmann::json::parse(line);
        if (j.contains("val_accuracy")) curve.emplace_back(j.at("step").get<int>(), j.at("val_accuracy").get<double>());
    }
    std::ostringstream shown;
    for (const auto& [step, accuracy] : curve) shown << " " << step << ": " << accuracy;
    std::printf("validation accuracy at steps%s\n", shown.str().c_str());
    ASSERT_EQ(curve.size(), std::size_t{steps / 250});
    EXPECT_EQ(curve.back().first, steps);
    EXPECT_GE(curve.back().second, 0.95) << "validation accuracy at steps" << shown.str();
}

}  // namespace
}  // namespace racesp::clitest
