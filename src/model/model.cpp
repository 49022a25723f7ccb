// The RACE transformer's forward and backward (model.hpp).
#include "model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <mpi.h>

#include "gemm.hpp"
#include "layers.hpp"
#include "racesp/errors.hpp"

namespace racesp::model {

void ModelConfig::validate() const {
    auto need = [](bool ok, const std::string& message) {
        if (!ok) throw ConfigError(message);
    };
    need(layers >= 1, "--layers must be at least 1, got " + std::to_string(layers));
    need(width >= 1, "--width must be at least 1, got " + std::to_string(width));
    need(heads >= 1, "--heads must be at least 1, got " + std::to_string(heads));
    need(width % heads == 0, "--width " + std::to_string(width) + " must be a multiple of --heads " +
                                 std::to_string(heads));
    need(vocab >= 2, "the vocabulary must have at least 2 tokens, got " + std::to_string(vocab));
    need(std::isfinite(beta) && beta > 0, "--beta must be positive, got " + std::to_string(beta));
    AttentionConfig attention;
    attention.tables = tables;
    attention.planes = planes;
    attention.validate();
}

ParameterLayout::ParameterLayout(const ModelConfig& c) {
    const std::int64_t w = c.width;
    embedding = add("embedding", std::int64_t{c.vocab} * w, true);
    for (int l = 0; l < c.layers; ++l) {
        const std::string p = "block" + std::to_string(l) + ".";
        Block b{};
        b.norm1 = add(p + "norm1", w, false);
        b.wqkv = add(p + "wqkv", w * 3 * w, true);
        b.wo = add(p + "wo", w * w, true);
        b.norm2 = add(p + "norm2", w, false);
        b.w1 = add(p + "w1", w * 4 * w, true);
        b.w2 = add(p + "w2", 4 * w * w, true);
        b.log_beta = add(p + "log_beta", 1, false);
        blocks.push_back(b);
    }
    final_norm = add("final_norm", w, false);
}

std::int64_t ParameterLayout::add(const std::string& name, std::int64_t size, bool decay) {
    tensors_.push_back({name, size_, size, decay});
    size_ += size;
    return size_ - size;
}

std::vector<float> initial_parameters(const ModelConfig& c, const ParameterLayout& layout) {
    std::vector<float> p(static_cast<std::size_t>(layout.size()));
    const double w = c.width;
    // Standard deviation per tensor: 0.02 for the (tied) embedding, 1/sqrt(fan-in) for
    // projections, divided by sqrt(2 layers) for those that feed the residual stream. The query
    // and key columns of wqkv get another 1/sqrt(head dim): the attention hashes them through
    // z = W q with N(0,1) planes (no 1/sqrt(D) inside), so q of unit-variance entries would give
    // z of standard deviation sqrt(D) and saturate u = tanh(z) for most planes at the start, where
    // the gradient through tanh vanishes and the tokens' hash codes stay frozen at random; with
    // |q| ~ 1, z starts near N(0, 1).
    const std::uint64_t seed = c.seed ^ 0x5eed5eed5eed5eedull;
    std::int64_t index = 0;
    for (const ParameterTensor& t : layout.tensors()) {
        const std::string& n = t.name;
        auto ends = [&](const char* s) { return n.size() >= std::strlen(s) && n.compare(n.size() - std::strlen(s), std::string::npos, s) == 0; };
        double std = 0;
        if (n == "embedding") std = 0.02;
        else if (ends("wqkv")) std = 1 / std::sqrt(w);
        else if (ends("w1")) std = 1 / std::sqrt(w);
        else if (ends("wo")) std = 1 / std::sqrt(w) / std::sqrt(2.0 * c.layers);
        else if (ends("w2")) std = 1 / std::sqrt(4 * w) / std::sqrt(2.0 * c.layers);
        for (std::int64_t i = 0; i < t.size; ++i) {
            float& v = p[static_cast<std::size_t>(t.offset + i)];
            if (ends("log_beta")) v = static_cast<float>(std::log(c.beta));
            else if (std == 0) v = 1.0f;  // norms
            else {
                // wqkv is [C x 3C]: columns 0..C-1 are q, C..2C-1 k, 2C..3C-1 v.
                const bool query_or_key = ends("wqkv") && i % (3 * std::int64_t{c.width}) < 2 * std::int64_t{c.width};
                const double scale = query_or_key ? 1 / std::sqrt(double(c.head_dim())) : 1.0;
                v = static_cast<float>(scale * std * plane_entry(seed, index, 0, 0, i));
            }
        }
        ++index;
    }
    return p;
}

AttentionConfig attention_config(const ModelConfig& c, int layer) {
    AttentionConfig a;
    a.tables = c.tables;
    a.planes = c.planes;
    a.causal = true;
    a.normalization = Normalization::kernel;
    a.seed = c.seed + 1 + static_cast<std::uint64_t>(layer);
    return a;
}

namespace {

std::vector<float> zeros(std::int64_t n) { return std::vector<float>(static_cast<std::size_t>(n), 0.0f); }

}  // namespace

Model::Model(const ModelConfig& config) : config_(config), layout_(config) {
    config_.validate();
    for (int l = 0; l < config_.layers; ++l)
        planes_.emplace_back(attention_config(config_, l), config_.heads, config_.head_dim());
}

// What the backward needs of one block (x rows are tokens of the shard).
struct Model::Cache {
    std::vector<float> x_in, inv1, h1, q, k, v, o, x_mid, inv2, h2, u;
};

std::uint64_t Model::activation_bytes(std::int64_t batch, std::int64_t tokens) const {
    // Per token, as run() allocates them, all alive at the start of the backward: every block's
    // Cache (x_in, h1, q, k, v, o, x_mid, h2: 8 c; u: 4 c; inv1, inv2: 2), the running x, qkv
    // and tmp (8 c), the final norm and the logits (c + 1 + vocab), the backward's dh, dx, dqkv,
    // dq, dk, dv and dattn (9 c), and the input and target ids (2 int32).
    const std::uint64_t c = static_cast<std::uint64_t>(config_.width), layers = static_cast<std::uint64_t>(config_.layers);
    const std::uint64_t floats = layers * (12 * c + 2) + 8 * c + (c + 1 + static_cast<std::uint64_t>(config_.vocab)) + 9 * c;
    return static_cast<std::uint64_t>(batch) * static_cast<std::uint64_t>(tokens) * (floats * sizeof(float) + 8);
}

double Model::run(Collectives& sp, const std::vector<float>& params, const ShardTokens& shard, double loss_scale,
                  std::vector<float>* grad, PassTimes& times, std::vector<std::int32_t>* predictions) {
    const std::int64_t bl = shard.batch, tl = shard.tokens, n = bl * tl;
    const std::int64_t c = config_.width, c4 = 4 * c, vocab = config_.vocab;
    const Shape shape{bl, tl, config_.heads, config_.head_dim()};
    const float* P = params.data();
    const double start = MPI_Wtime();
    double collective = 0;

    // Inputs and next-token targets of every local token.
    std::vector<std::int32_t> inputs(static_cast<std::size_t>(n)), targets(static_cast<std::size_t>(n));
    for (std::int64_t b = 0; b < bl; ++b)
        for (std::int64_t t = 0; t < tl; ++t) {
            inputs[static_cast<std::size_t>(b * tl + t)] = shard.ids[static_cast<std::size_t>(b * (tl + 1) + t)];
            targets[static_cast<std::size_t>(b * tl + t)] = shard.ids[static_cast<std::size_t>(b * (tl + 1) + t + 1)];
        }

    std::vector<float> x = zeros(n * c);
    embedding_forward(n, c, P + layout_.embedding, inputs.data(), x.data());

    std::vector<Cache> caches(static_cast<std::size_t>(config_.layers));
    std::vector<float> qkv = zeros(n * 3 * c), tmp = zeros(n * c4);
    for (int l = 0; l < config_.layers; ++l) {
        const ParameterLayout::Block& B = layout_.blocks[static_cast<std::size_t>(l)];
        Cache& k = caches[static_cast<std::size_t>(l)];
        k.x_in = x;
        k.inv1 = zeros(n);
        k.h1 = zeros(n * c);
        rmsnorm_forward(n, c, x.data(), P + B.norm1, k.h1.data(), k.inv1.data());
        gemm(false, false, n, 3 * c, c, 1.0f, k.h1.data(), P + B.wqkv, 0.0f, qkv.data());
        k.q = zeros(n * c);
        k.k = zeros(n * c);
        k.v = zeros(n * c);
#pragma omp parallel for schedule(static)
        for (std::int64_t i = 0; i < n; ++i)
            for (std::int64_t j = 0; j < c; ++j) {
                k.q[static_cast<std::size_t>(i * c + j)] = qkv[static_cast<std::size_t>(i * 3 * c + j)];
                k.k[static_cast<std::size_t>(i * c + j)] = qkv[static_cast<std::size_t>(i * 3 * c + c + j)];
                k.v[static_cast<std::size_t>(i * c + j)] = qkv[static_cast<std::size_t>(i * 3 * c + 2 * c + j)];
            }
        k.o = zeros(n * c);
        AttentionConfig ac = attention_config(config_, l);
        ac.beta = std::exp(double(P[B.log_beta]));
        StepTimes st = distributed_forward(sp, ac, planes_[static_cast<std::size_t>(l)], ConstTensor(k.q.data(), shape),
                                           ConstTensor(k.k.data(), shape), ConstTensor(k.v.data(), shape),
                                           MutTensor(k.o.data(), shape));
        collective += st.collective_s;
        // x += o Wo
        gemm(false, false, n, c, c, 1.0f, k.o.data(), P + B.wo, 1.0f, x.data());
        k.x_mid = x;
        k.inv2 = zeros(n);
        k.h2 = zeros(n * c);
        rmsnorm_forward(n, c, x.data(), P + B.norm2, k.h2.data(), k.inv2.data());
        k.u = zeros(n * c4);
        gemm(false, false, n, c4, c, 1.0f, k.h2.data(), P + B.w1, 0.0f, k.u.data());
        gelu_forward(n * c4, k.u.data(), tmp.data());
        gemm(false, false, n, c, c4, 1.0f, tmp.data(), P + B.w2, 1.0f, x.data());
    }

    std::vector<float> inv_f = zeros(n), hf = zeros(n * c), logits = zeros(n * vocab);
    rmsnorm_forward(n, c, x.data(), P + layout_.final_norm, hf.data(), inv_f.data());
    gemm(false, true, n, vocab, c, 1.0f, hf.data(), P + layout_.embedding, 0.0f, logits.data());
    if (predictions) {
        predictions->resize(static_cast<std::size_t>(n));
        for (std::int64_t i = 0; i < n; ++i) {
            const float* li = logits.data() + i * vocab;
            (*predictions)[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(std::max_element(li, li + vocab) - li);
        }
    }
    const double loss = cross_entropy(n, vocab, logits.data(), targets.data(), loss_scale);

    if (grad) {
        float* G = grad->data();
        // logits now holds dL/dlogits. Tied head: dE += dlogits^T hf, dhf = dlogits E.
        gemm(true, false, vocab, c, n, 1.0f, logits.data(), hf.data(), 1.0f, G + layout_.embedding);
        std::vector<float> dh = zeros(n * c), dx = zeros(n * c);
        gemm(false, false, n, c, vocab, 1.0f, logits.data(), P + layout_.embedding, 0.0f, dh.data());
        rmsnorm_backward(n, c, x.data(), P + layout_.final_norm, inv_f.data(), dh.data(), dx.data(),
                         G + layout_.final_norm);

        std::vector<float> dqkv = zeros(n * 3 * c), dq = zeros(n * c), dk = zeros(n * c), dv = zeros(n * c),
                           dattn = zeros(n * c);
        for (int l = config_.layers - 1; l >= 0; --l) {
            const ParameterLayout::Block& B = layout_.blocks[static_cast<std::size_t>(l)];
            Cache& k = caches[static_cast<std::size_t>(l)];
            // MLP: x_out = x_mid + gelu(h2 W1) W2
            gelu_forward(n * c4, k.u.data(), tmp.data());
            gemm(true, false, c4, c, n, 1.0f, tmp.data(), dx.data(), 1.0f, G + B.w2);
            gemm(false, true, n, c4, c, 1.0f, dx.data(), P + B.w2, 0.0f, tmp.data());
            gelu_backward(n * c4, k.u.data(), tmp.data());
            gemm(true, false, c, c4, n, 1.0f, k.h2.data(), tmp.data(), 1.0f, G + B.w1);
            gemm(false, true, n, c, c4, 1.0f, tmp.data(), P + B.w1, 0.0f, dh.data());
            rmsnorm_backward(n, c, k.x_mid.data(), P + B.norm2, k.inv2.data(), dh.data(), dx.data(), G + B.norm2);
            // Attention: x_mid = x_in + attn(h1 Wqkv) Wo
            gemm(true, false, c, c, n, 1.0f, k.o.data(), dx.data(), 1.0f, G + B.wo);
            gemm(false, true, n, c, c, 1.0f, dx.data(), P + B.wo, 0.0f, dattn.data());
            AttentionConfig ac = attention_config(config_, l);
            const double beta = std::exp(double(P[B.log_beta]));
            ac.beta = beta;
            double dbeta = 0;
            // MPI_COMM_SELF: this rank's part of dbeta; the caller sums every gradient over ranks.
            StepTimes st = distributed_backward(sp, MPI_COMM_SELF, ac, planes_[static_cast<std::size_t>(l)],
                                                ConstTensor(k.q.data(), shape), ConstTensor(k.k.data(), shape),
                                                ConstTensor(k.v.data(), shape), ConstTensor(dattn.data(), shape),
                                                MutTensor(dq.data(), shape), MutTensor(dk.data(), shape),
                                                MutTensor(dv.data(), shape), dbeta);
            collective += st.collective_s;
            G[B.log_beta] += static_cast<float>(dbeta * beta);
#pragma omp parallel for schedule(static)
            for (std::int64_t i = 0; i < n; ++i)
                for (std::int64_t j = 0; j < c; ++j) {
                    dqkv[static_cast<std::size_t>(i * 3 * c + j)] = dq[static_cast<std::size_t>(i * c + j)];
                    dqkv[static_cast<std::size_t>(i * 3 * c + c + j)] = dk[static_cast<std::size_t>(i * c + j)];
                    dqkv[static_cast<std::size_t>(i * 3 * c + 2 * c + j)] = dv[static_cast<std::size_t>(i * c + j)];
                }
            gemm(true, false, c, 3 * c, n, 1.0f, k.h1.data(), dqkv.data(), 1.0f, G + B.wqkv);
            gemm(false, true, n, c, 3 * c, 1.0f, dqkv.data(), P + B.wqkv, 0.0f, dh.data());
            rmsnorm_backward(n, c, k.x_in.data(), P + B.norm1, k.inv1.data(), dh.data(), dx.data(), G + B.norm1);
        }
        embedding_backward(n, c, inputs.data(), dx.data(), G + layout_.embedding);
    }
    const double total = MPI_Wtime() - start;
    times.collective_s += collective;
    times.compute_s += total - collective;
    return loss;
}

}  // namespace racesp::model
