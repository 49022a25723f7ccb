// AdamW with linear warm-up and cosine decay of the learning rate, and clipping by the global
// gradient norm. Every rank holds the same parameters and, after the gradient allreduce, the
// same gradient, so every rank takes the same step with no communication.
#pragma once

#include <cstdint>
#include <vector>

#include "model.hpp"

namespace racesp::model {

struct OptimizerConfig {
    double lr = 1e-3;
    std::int64_t warmup = 0;      // steps of linear warm-up from 0
    std::int64_t steps = 1;       // total steps: cosine decay from lr to min_lr_ratio * lr
    double min_lr_ratio = 0.1;
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
    double weight_decay = 0.0;    // decoupled, on matrices and the embedding only
    double clip = 1.0;            // largest global gradient norm; 0: no clipping
};

// Learning rate of step `step` (1-based).
double learning_rate(const OptimizerConfig& config, std::int64_t step);

class AdamW {
public:
    AdamW(const OptimizerConfig& config, const ParameterLayout& layout);

    // Clips grad (in place) to the global norm, then updates params; `step` is 1-based.
    // Returns the gradient norm before clipping.
    double step(std::int64_t step, std::vector<float>& params, std::vector<float>& grad);

    // First and second moments, for checkpoints.
    std::vector<float>& m() { return m_; }
    std::vector<float>& v() { return v_; }

private:
    OptimizerConfig config_;
    std::vector<char> decay_;  // per element
    std::vector<float> m_, v_;
};

}  // namespace racesp::model
