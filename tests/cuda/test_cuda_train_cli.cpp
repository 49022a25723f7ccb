// racesp train --device cuda end to end (the binary): the GPU run's losses against the CPU run's
// on the same data, checkpoints that move between the devices, 1 GPU against 2 (sp 2, and dp 2),
// and the errors. Tolerances, relative per step over 6 steps of a small model:
//   fp32 compute: 1e-5 against the CPU (float32 rounding in other orders; measured on an H200:
//   7e-9, and 6e-9 for runs resumed across devices);
//   bf16 compute: 3e-3 against the CPU (bfloat16 inputs of every matrix product; measured 2.3e-4);
//   2 GPUs against 1, fp32: 1e-5; bf16: 3e-3.
// Tests that need a GPU (two, for the multi-GPU ones) skip themselves without.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <nlohmann/json.hpp>

#include "harness.hpp"
#include "train_helpers.hpp"
#include "racesp/cuda_attention.hpp"

namespace racesp::clitest {
namespace {

const int env_ready = ::setenv("OPENBLAS_NUM_THREADS", "1", 1) + ::setenv("NCCL_NVLS_ENABLE", "0", 1);

int gpus() { return cuda::device_count(); }

#define NEED_GPUS(n) \
    if (gpus() < (n)) GTEST_SKIP() << "needs " << (n) << " CUDA device(s), found " << gpus()

class CudaTrain : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_EQ(env_ready, 0);
        write_text(dir / "a.txt", 40000, 1);
        Result prep = racesp(0, "prep --input a.txt --output tokens.h5 --val-fraction 0.1", dir.path());
        ASSERT_EQ(prep.code, 0) << prep.output;
    }
    // A small model: 2 layers, width 32, 2 heads, 96-token windows, 4 sequences per step, 6 steps.
    Result train(int ranks, const std::string& extra) {
        const std::string base = "train --data tokens.h5 --layers 2 --width 32 --heads 2 --tables 2 --planes 3 "
                                  "--seq-len 96 --batch 4 --steps 6 --lr 3e-3 --warmup 2 --quiet ";
        return racesp(ranks, base + extra, dir.path(), 180);
    }
    void expect_close(const std::string& a, const std::string& b, double tol, std::size_t from = 0) {
        const std::vector<double> x = losses(dir / a), y = losses(dir / b);
        ASSERT_EQ(x.size(), y.size()) << a << " vs " << b;
        ASSERT_GT(x.size(), from);
        double worst = 0;
        for (std::size_t i = from; i < x.size(); ++i) {
            EXPECT_NEAR(x[i], y[i], tol * std::abs(y[i])) << a << " vs " << b << " at step " << i + 1;
            worst = std::max(worst, std::abs(x[i] - y[i]) / std::abs(y[i]));
        }
        std::printf("[ %s vs %s ] largest relative loss difference %.2e (tolerance %.0e)\n", a.c_str(), b.c_str(),
                    worst, tol);
    }
    void expect_error(const std::string& extra, const std::string& message) {
        Result run = train(0, extra);
        EXPECT_NE(run.code, 0) << run.output;
        std::vector<std::string> lines = run.error_lines();
        ASSERT_EQ(lines.size(), 1u) << run.output;
        EXPECT_NE(lines[0].find(message), std::string::npos) << "expected '" << message << "' in: " << lines[0];
    }
    ScratchDir dir;
};

TEST_F(CudaTrain, GpuLossesMatchTheCpu) {
    NEED_GPUS(1);
    ASSERT_EQ(train(0, "--metrics cpu.jsonl").code, 0);
    Result fp32 = train(0, "--device cuda --precision fp32 --metrics fp32.jsonl");
    ASSERT_EQ(fp32.code, 0) << fp32.output;
    Result bf16 = train(0, "--device cuda --metrics bf16.jsonl");
    ASSERT_EQ(bf16.code, 0) << bf16.output;
    EXPECT_NE(bf16.output.find("cuda bf16"), std::string::npos) << bf16.output;  // the summary names the device
    expect_close("fp32.jsonl", "cpu.jsonl", 1e-5);
    expect_close("bf16.jsonl", "cpu.jsonl", 3e-3);
    const std::vector<double> l = losses(dir / "bf16.jsonl");
    EXPECT_LT(l.back(), l.front());  // it learns
    // Validation and recomputation run too, and recomputing changes nothing.
    Result again = train(0, "--device cuda --precision fp32 --recompute --val-every 3 --metrics again.jsonl");
    ASSERT_EQ(again.code, 0) << again.output;
    expect_close("again.jsonl", "fp32.jsonl", 0.0);
}

TEST_F(CudaTrain, CheckpointsMoveBetweenCpuAndGpu) {
    NEED_GPUS(1);
    ASSERT_EQ(train(0, "--metrics cpu.jsonl").code, 0);
    ASSERT_EQ(train(0, "--device cuda --precision fp32 --metrics gpu.jsonl").code, 0);
    // GPU steps 1-3, then the CPU resumes from the GPU's checkpoint.
    Result first = train(0, "--device cuda --precision fp32 --stop-at 3 --checkpoint-every 3 --checkpoint-dir g "
                            "--metrics g2c.jsonl");
    ASSERT_EQ(first.code, 0) << first.output;
    Result second = train(0, "--resume --checkpoint-dir g --metrics g2c.jsonl");
    ASSERT_EQ(second.code, 0) << second.output;
    expect_close("g2c.jsonl", "gpu.jsonl", 1e-5);
    // CPU steps 1-3, then the GPU resumes from the CPU's checkpoint.
    ASSERT_EQ(train(0, "--stop-at 3 --checkpoint-every 3 --checkpoint-dir c --metrics c2g.jsonl").code, 0);
    Result third = train(0, "--device cuda --precision fp32 --resume --checkpoint-dir c --metrics c2g.jsonl");
    ASSERT_EQ(third.code, 0) << third.output;
    expect_close("c2g.jsonl", "cpu.jsonl", 1e-5);
}

TEST_F(CudaTrain, TwoGpusMatchOne) {
    NEED_GPUS(2);
    for (const char* precision : {"fp32", "bf16"}) {
        const std::string p = precision;
        const std::string run = "--device cuda --precision " + p + " --metrics ";
        ASSERT_EQ(train(0, run + "one-" + p + ".jsonl").code, 0);
        Result sp2 = train(2, run + "sp2-" + p + ".jsonl --sp-size 2");
        ASSERT_EQ(sp2.code, 0) << sp2.output;
        Result dp2 = train(2, run + "dp2-" + p + ".jsonl --sp-size 1");
        ASSERT_EQ(dp2.code, 0) << dp2.output;
        const double tol = p == "fp32" ? 1e-5 : 3e-3;
        expect_close("sp2-" + p + ".jsonl", "one-" + p + ".jsonl", tol);
        expect_close("dp2-" + p + ".jsonl", "one-" + p + ".jsonl", tol);
    }
}

TEST_F(CudaTrain, Errors) {
    expect_error("--device cuda --precision fp16", "--precision must be 'bf16' or 'fp32', got 'fp16'");
    expect_error("--recompute", "--recompute applies to --device cuda only");
    expect_error("--device tpu", "device must be 'cpu' or 'cuda', got 'tpu'");
    if (gpus() == 0) expect_error("--device cuda", "--device cuda: no CUDA device is visible to this process");
}

}  // namespace
}  // namespace racesp::clitest
