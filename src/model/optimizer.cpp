// AdamW, schedule and clipping (optimizer.hpp).
#include "optimizer.hpp"

#include <algorithm>
#include <cmath>

namespace racesp::model {

double learning_rate(const OptimizerConfig& c, std::int64_t step) {
    if (c.warmup > 0 && step <= c.warmup) return c.lr * double(step) / double(c.warmup);
    const double span = double(std::max<std::int64_t>(1, c.steps - c.warmup));
    const double progress = std::clamp(double(step - c.warmup) / span, 0.0, 1.0);
    const double cosine = 0.5 * (1 + std::cos(M_PI * progress));
    return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * cosine);
}

AdamW::AdamW(const OptimizerConfig& config, const ParameterLayout& layout)
    : config_(config),
      decay_(static_cast<std::size_t>(layout.size()), 0),
      m_(static_cast<std::size_t>(layout.size()), 0.0f),
      v_(static_cast<std::size_t>(layout.size()), 0.0f) {
    for (const ParameterTensor& t : layout.tensors())
        std::fill_n(decay_.begin() + t.offset, t.size, t.decay ? 1 : 0);
}

double AdamW::step(std::int64_t step, std::vector<float>& params, std::vector<float>& grad) {
    double sum = 0;
    for (float g : grad) sum += double(g) * double(g);
    const double norm = std::sqrt(sum);
    const double scale = config_.clip > 0 && norm > config_.clip ? config_.clip / norm : 1.0;
    const double lr = learning_rate(config_, step);
    const double c1 = 1 - std::pow(config_.beta1, double(step));
    const double c2 = 1 - std::pow(config_.beta2, double(step));
    const float b1 = float(config_.beta1), b2 = float(config_.beta2);
    for (std::size_t i = 0; i < params.size(); ++i) {
        const float g = float(grad[i] * scale);
        grad[i] = g;
        m_[i] = b1 * m_[i] + (1 - b1) * g;
        v_[i] = b2 * v_[i] + (1 - b2) * g * g;
        const double update = (double(m_[i]) / c1) / (std::sqrt(double(v_[i]) / c2) + config_.eps);
        double p = params[i];
        if (decay_[i]) p -= lr * config_.weight_decay * p;
        params[i] = float(p - lr * update);
    }
    return norm;
}

}  // namespace racesp::model
