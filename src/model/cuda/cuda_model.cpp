// The RACE transformer's forward and backward on one CUDA device (cuda_model.hpp): model.cpp's
// steps, with cuBLAS products (device_gemm.hpp), the token-local kernels (model_kernels.hpp) and
// the CUDA attention engine (racesp/cuda_distributed.hpp).
#include "cuda_model.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "cuda_check.hpp"
#include "device_buffer.hpp"
#include "device_gemm.hpp"
#include "model_kernels.hpp"
#include "racesp/cuda_distributed.hpp"
#include "racesp/errors.hpp"

namespace racesp::model::gpu {

namespace {

using Bytes = racesp::cuda::DeviceBuffer<unsigned char>;

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Device-to-device copy of `bytes` (none when empty: an empty shard's buffers are null).
void copy(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
    if (bytes > 0) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
}

template <class T>
T* as(const Bytes& b) {
    return reinterpret_cast<T*>(b.data());
}

// Rows of the tied LM head per pass: logits [rows, vocab] in float32 stay below 128 MiB.
std::int64_t head_rows(std::int64_t vocab) {
    const std::int64_t rows = (std::int64_t{32} << 20) / std::max<std::int64_t>(vocab, 1);
    return std::max<std::int64_t>(cross_entropy_rows, rows / cross_entropy_rows * cross_entropy_rows);
}

}  // namespace

// What the backward needs of one block (rows are the shard's tokens). With recompute, one of
// these serves every block in turn.
struct BlockCache {
    Bytes inv1, inv2;  // float32 [n]
    Bytes q, k, v, o;  // dtype [n, c]
    Bytes x_mid;       // float32 [n, c]: the residual stream after attention
    Bytes u;           // dtype [n, 4c]: the MLP's hidden layer before GELU
    // The attention engine of the block's forward, kept for its backward: that reuses the
    // forward's key totals and normalisers over the same q, k, v and o (Engine::KeyTotals).
    std::unique_ptr<racesp::cuda::Engine> attention;
};

struct CudaModel::Impl {
    ModelConfig config;
    ParameterLayout layout;
    CudaModelOptions options;
    cudaStream_t stream;
    DeviceGemm gemm;
    std::vector<Planes> planes;  // per layer
    std::size_t es;              // bytes per activation element
    cudaEvent_t ready = nullptr;

    std::int64_t batch = -1, tokens = -1;
    bool backward_ready = false;
    Bytes inputs, targets, predictions;  // int32 [n]
    std::vector<std::unique_ptr<Bytes>> xs;  // float32 [n, c]: the input of every block, and the final x
    std::vector<std::unique_ptr<BlockCache>> caches;
    Bytes inv_final, inv_scratch;        // float32 [n]
    Bytes h;                             // dtype [n, c]: a normed residual stream
    Bytes a;                             // dtype [n, 4c]: GELU output, its gradient; dq, dk, dv
    Bytes dx, dh;                        // float32 [n, c]
    Bytes dxa, dattn;                    // dtype [n, c]
    Bytes logits;                        // float32 [head rows, vocab]
    Bytes dlogits;                       // dtype [head rows, vocab] (also the one-hot rows)
    Bytes loss_parts, loss;              // float64
    Bytes gain_work;                     // float32
    Bytes weights;                       // dtype copy of the parameters (bf16 only)

    Impl(const ModelConfig& c, CudaModelOptions o, cudaStream_t s)
        : config(c), layout(c), options(o), stream(s), gemm(s), es(racesp::cuda::dtype_size(o.dtype)) {
        config.validate();
        if (o.dtype != DType::bf16 && o.dtype != DType::f32)
            throw ConfigError("the GPU model computes in bf16 or fp32, not " + std::string(racesp::cuda::to_string(o.dtype)));
        for (int l = 0; l < config.layers; ++l) planes.emplace_back(attention_config(config, l), config.heads, config.head_dim());
        CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    }
    ~Impl() {
        if (ready) cudaEventDestroy(ready);
    }

    BlockCache& cache(int layer) { return *caches[options.recompute ? 0 : static_cast<std::size_t>(layer)]; }
    float* x(std::int64_t layer) const { return as<float>(*xs[static_cast<std::size_t>(layer)]); }

    // Calls f(buffer, bytes) for every buffer that a shard of bl x tl tokens needs (the backward
    // too with `backward`); `buffer` is null for residual-stream and block buffers that do not
    // exist yet (reserve creates them first; estimate only counts).
    template <class F>
    void for_each_buffer(std::int64_t bl, std::int64_t tl, bool backward, F&& f) {
        const std::size_t n = static_cast<std::size_t>(bl * tl), c = static_cast<std::size_t>(config.width);
        const std::size_t vocab = static_cast<std::size_t>(config.vocab), f4 = sizeof(float);
        const std::size_t rows = std::min<std::size_t>(static_cast<std::size_t>(head_rows(config.vocab)),
                                                       (n + cross_entropy_rows - 1) / cross_entropy_rows * cross_entropy_rows);
        for (Bytes* b : {&inputs, &targets, &predictions}) f(b, n * 4);
        for (std::size_t i = 0; i <= static_cast<std::size_t>(config.layers); ++i)
            f(i < xs.size() ? xs[i].get() : nullptr, n * c * f4);
        // Forward-only runs need one block's buffers; the backward needs every block's unless
        // they are recomputed.
        const std::size_t blocks = options.recompute || !backward ? 1 : static_cast<std::size_t>(config.layers);
        for (std::size_t i = 0; i < blocks; ++i) {
            BlockCache* k = i < caches.size() ? caches[i].get() : nullptr;
            auto at = [&](Bytes BlockCache::*member) { return k ? &(k->*member) : nullptr; };
            f(at(&BlockCache::inv1), n * f4);
            f(at(&BlockCache::inv2), n * f4);
            for (Bytes BlockCache::*m : {&BlockCache::q, &BlockCache::k, &BlockCache::v, &BlockCache::o}) f(at(m), n * c * es);
            f(at(&BlockCache::x_mid), n * c * f4);
            f(at(&BlockCache::u), n * 4 * c * es);
        }
        f(&inv_final, n * f4);
        f(&h, n * c * es);
        f(&a, n * 4 * c * es);
        f(&logits, rows * vocab * f4);
        f(&dlogits, rows * vocab * es);
        f(&loss_parts, (n / cross_entropy_rows + 1) * sizeof(double));
        f(&loss, sizeof(double));
        if (options.dtype != DType::f32) f(&weights, static_cast<std::size_t>(layout.size()) * es);
        if (backward) {
            f(&inv_scratch, n * f4);
            for (Bytes* b : {&dx, &dh}) f(b, n * c * f4);
            for (Bytes* b : {&dxa, &dattn}) f(b, n * c * es);
            f(&gain_work, static_cast<std::size_t>(rmsnorm_gain_work(bl * tl, config.width)) * f4);
        }
    }

    std::size_t estimate(std::int64_t bl, std::int64_t tl, bool backward) {
        std::size_t total = 0;
        for_each_buffer(bl, tl, backward, [&](Bytes*, std::size_t bytes) { total += bytes; });
        return total;
    }

    void reserve(std::int64_t bl, std::int64_t tl, bool backward) {
        if (bl == batch && tl == tokens && (backward_ready || !backward)) return;
        while (xs.size() < static_cast<std::size_t>(config.layers) + 1) xs.push_back(std::make_unique<Bytes>());
        const std::size_t blocks = options.recompute || !backward ? 1 : static_cast<std::size_t>(config.layers);
        caches.resize(std::min(caches.size(), blocks));
        while (caches.size() < blocks) caches.push_back(std::make_unique<BlockCache>());
        for_each_buffer(bl, tl, backward, [](Bytes* b, std::size_t bytes) { b->reserve(bytes); });
        batch = bl;
        tokens = tl;
        backward_ready = backward;
    }

    std::size_t bytes() const {
        std::size_t total = 0;
        for (const Bytes* b : {&inputs, &targets, &predictions, &inv_final, &inv_scratch, &h, &a, &dx, &dh, &dxa,
                               &dattn, &logits, &dlogits, &loss_parts, &loss, &gain_work, &weights})
            total += b->bytes();
        for (const auto& x : xs) total += x->bytes();
        for (const auto& k : caches)
            for (const Bytes* b : {&k->inv1, &k->inv2, &k->q, &k->k, &k->v, &k->o, &k->x_mid, &k->u}) total += b->bytes();
        return total;
    }

    // --- views for the matrix products ---
    const void* w_base = nullptr;  // the parameters in the compute dtype
    Matrix w(std::int64_t offset, std::int64_t ld) const {
        return {static_cast<const char*>(w_base) + offset * static_cast<std::int64_t>(es), options.dtype, ld};
    }
    Matrix in(const void* p, std::int64_t ld, std::int64_t row = 0) const {
        return {static_cast<const char*>(p) + row * ld * static_cast<std::int64_t>(es), options.dtype, ld};
    }
    MutMatrix out(void* p, std::int64_t ld) const { return {p, options.dtype, ld}; }
    static MutMatrix f32(float* p, std::int64_t ld) { return {p, DType::f32, ld}; }
    void* part(const Bytes& b, std::int64_t index, std::int64_t elements) const {
        return b.data() + index * elements * static_cast<std::int64_t>(es);
    }
    racesp::cuda::DeviceTensor tensor(void* p, const Shape& s) const { return {p, s, options.dtype}; }

    // The attention engine of block `l` at the current beta, ordered after this stream's work.
    std::unique_ptr<racesp::cuda::Engine> engine(int l, double beta) {
        AttentionConfig ac = attention_config(config, l);
        ac.beta = beta;
        auto e = std::make_unique<racesp::cuda::Engine>(ac, planes[static_cast<std::size_t>(l)]);
        order_after_stream(*e);
        return e;
    }
    void order_after_stream(racesp::cuda::Engine& e) {
        CUDA_CHECK(cudaEventRecord(ready, stream));
        CUDA_CHECK(cudaStreamWaitEvent(e.stream(), ready, 0));
    }
    // Time in the attention layers (engine calls, which return when their work is done; the
    // stream is drained first so that the time is theirs alone).
    double attention_s = 0;
    struct AttentionTimer {
        Impl& m;
        double start;
        explicit AttentionTimer(Impl& impl) : m(impl), start(0) {
            CUDA_CHECK(cudaStreamSynchronize(m.stream));
            start = now();
        }
        ~AttentionTimer() { m.attention_s += now() - start; }
    };

    // Block l's forward from xs[l]: fills k and, with `write_output`, xs[l + 1]; with
    // `keep_for_backward`, k.attention for the backward that follows.
    double forward_block(Collectives& sp, const float* P, int l, double beta, BlockCache& k, const Shape& shape,
                         bool write_output, bool keep_for_backward) {
        const ParameterLayout::Block& B = layout.blocks[static_cast<std::size_t>(l)];
        const std::int64_t n = shape.batch * shape.tokens, c = config.width, c4 = 4 * c;
        const float* x_in = x(l);
        rmsnorm_forward(n, c, x_in, P + B.norm1, h.data(), options.dtype, as<float>(k.inv1), stream);
        Bytes* qkv[3] = {&k.q, &k.k, &k.v};
        for (int p = 0; p < 3; ++p)
            gemm(false, false, n, c, c, 1.0f, in(h.data(), c), w(B.wqkv + p * c, 3 * c), 0.0f, out(qkv[p]->data(), c));
        double collective = 0;
        {
            AttentionTimer timer(*this);
            auto e = engine(l, beta);
            using KeyTotals = racesp::cuda::Engine::KeyTotals;
            const StepTimes st = racesp::cuda::device_distributed_forward(
                *e, sp, tensor(k.q.data(), shape), tensor(k.k.data(), shape), tensor(k.v.data(), shape),
                tensor(k.o.data(), shape), keep_for_backward ? KeyTotals::keep : KeyTotals::recompute);
            collective += st.collective_s;
            k.attention = keep_for_backward ? std::move(e) : nullptr;
        }
        // x_mid = x_in + o Wo
        float* x_mid = as<float>(k.x_mid);
        copy(x_mid, x_in, n * c * sizeof(float), stream);
        gemm(false, false, n, c, c, 1.0f, in(k.o.data(), c), w(B.wo, c), 1.0f, f32(x_mid, c));
        // x_out = x_mid + gelu(norm(x_mid) W1) W2
        rmsnorm_forward(n, c, x_mid, P + B.norm2, h.data(), options.dtype, as<float>(k.inv2), stream);
        gemm(false, false, n, c4, c, 1.0f, in(h.data(), c), w(B.w1, c4), 0.0f, out(k.u.data(), c4));
        if (write_output) {
            float* x_out = x(l + 1);
            gelu_forward(n * c4, k.u.data(), a.data(), options.dtype, stream);
            copy(x_out, x_mid, n * c * sizeof(float), stream);
            gemm(false, false, n, c, c4, 1.0f, in(a.data(), c4), w(B.w2, c), 1.0f, f32(x_out, c));
        }
        return collective;
    }

    // Block l's backward: dx holds dL/d(x_out) and becomes dL/d(x_in); gradients into G.
    double backward_block(Collectives& sp, const float* P, float* G, int l, double beta, BlockCache& k,
                          const Shape& shape) {
        const ParameterLayout::Block& B = layout.blocks[static_cast<std::size_t>(l)];
        const std::int64_t n = shape.batch * shape.tokens, c = config.width, c4 = 4 * c;
        const float* x_in = x(l);
        const float* x_mid = as<float>(k.x_mid);
        float* dxp = as<float>(dx);
        float* dhp = as<float>(dh);
        // MLP: x_out = x_mid + gelu(h2 W1) W2
        from_float32(n * c, dxp, dxa.data(), options.dtype, stream);
        gelu_forward(n * c4, k.u.data(), a.data(), options.dtype, stream);
        gemm(true, false, c4, c, n, 1.0f, in(a.data(), c4), in(dxa.data(), c), 1.0f, f32(G + B.w2, c));
        gemm(false, true, n, c4, c, 1.0f, in(dxa.data(), c), w(B.w2, c), 0.0f, out(a.data(), c4));
        gelu_backward(n * c4, k.u.data(), a.data(), options.dtype, stream);
        rmsnorm_forward(n, c, x_mid, P + B.norm2, h.data(), options.dtype, as<float>(inv_scratch), stream);
        gemm(true, false, c, c4, n, 1.0f, in(h.data(), c), in(a.data(), c4), 1.0f, f32(G + B.w1, c4));
        gemm(false, true, n, c, c4, 1.0f, in(a.data(), c4), w(B.w1, c4), 0.0f, f32(dhp, c));
        rmsnorm_backward_input(n, c, x_mid, P + B.norm2, as<float>(k.inv2), dhp, dxp, stream);
        rmsnorm_backward_gain(n, c, x_mid, as<float>(k.inv2), dhp, G + B.norm2, as<float>(gain_work), stream);
        // Attention: x_mid = x_in + attn(h1 Wqkv) Wo
        from_float32(n * c, dxp, dxa.data(), options.dtype, stream);
        gemm(true, false, c, c, n, 1.0f, in(k.o.data(), c), in(dxa.data(), c), 1.0f, f32(G + B.wo, c));
        gemm(false, true, n, c, c, 1.0f, in(dxa.data(), c), w(B.wo, c), 0.0f, out(dattn.data(), c));
        void* dqkv[3] = {part(a, 0, n * c), part(a, 1, n * c), part(a, 2, n * c)};
        double dbeta = 0, collective = 0;
        {
            AttentionTimer timer(*this);
            // The forward's engine where it was kept at this beta, else a new one that recomputes.
            using KeyTotals = racesp::cuda::Engine::KeyTotals;
            std::unique_ptr<racesp::cuda::Engine> e = std::move(k.attention);
            const bool reuse = e && e->config().beta == beta;
            if (reuse) order_after_stream(*e);
            else e = engine(l, beta);
            // MPI_COMM_SELF: this rank's part of dbeta; the caller sums every gradient over ranks.
            const StepTimes st = racesp::cuda::device_distributed_backward(
                *e, sp, MPI_COMM_SELF, tensor(k.q.data(), shape), tensor(k.k.data(), shape),
                tensor(k.v.data(), shape), tensor(k.o.data(), shape), tensor(dattn.data(), shape), tensor(dqkv[0], shape),
                tensor(dqkv[1], shape), tensor(dqkv[2], shape), dbeta, reuse ? KeyTotals::reuse : KeyTotals::recompute);
            collective += st.collective_s;
        }
        add_scalar(G + B.log_beta, static_cast<float>(dbeta * beta), stream);
        rmsnorm_forward(n, c, x_in, P + B.norm1, h.data(), options.dtype, as<float>(inv_scratch), stream);
        for (int p = 0; p < 3; ++p)
            gemm(true, false, c, c, n, 1.0f, in(h.data(), c), in(dqkv[p], c), 1.0f, f32(G + B.wqkv + p * c, 3 * c));
        for (int p = 0; p < 3; ++p)
            gemm(false, true, n, c, c, 1.0f, in(dqkv[p], c), w(B.wqkv + p * c, 3 * c), p == 0 ? 0.0f : 1.0f, f32(dhp, c));
        rmsnorm_backward_input(n, c, x_in, P + B.norm1, as<float>(k.inv1), dhp, dxp, stream);
        rmsnorm_backward_gain(n, c, x_in, as<float>(k.inv1), dhp, G + B.norm1, as<float>(gain_work), stream);
        return collective;
    }
};

CudaModel::CudaModel(const ModelConfig& config, CudaModelOptions options, cudaStream_t stream)
    : impl_(std::make_unique<Impl>(config, options, stream)) {}
CudaModel::~CudaModel() = default;

const ModelConfig& CudaModel::config() const { return impl_->config; }
const ParameterLayout& CudaModel::layout() const { return impl_->layout; }
const CudaModelOptions& CudaModel::options() const { return impl_->options; }
void CudaModel::reserve(std::int64_t batch, std::int64_t tokens, bool backward) { impl_->reserve(batch, tokens, backward); }
std::size_t CudaModel::estimate_bytes(std::int64_t batch, std::int64_t tokens, bool backward) const {
    return impl_->estimate(batch, tokens, backward);
}
std::size_t CudaModel::reserved_bytes() const { return impl_->bytes(); }

double CudaModel::run(Collectives& sp, const float* params, const ShardTokens& shard, double loss_scale, float* grad,
                      PassTimes& times, std::vector<std::int32_t>* predictions) {
    Impl& m = *impl_;
    const std::int64_t bl = shard.batch, tl = shard.tokens, n = bl * tl;
    const std::int64_t c = m.config.width, vocab = m.config.vocab, layers = m.config.layers;
    const Shape shape{bl, tl, m.config.heads, m.config.head_dim()};
    const cudaStream_t stream = m.stream;
    if (static_cast<std::int64_t>(shard.ids.size()) != bl * (tl + 1))
        throw Error("CudaModel::run: the shard holds " + std::to_string(shard.ids.size()) + " ids, expected " +
                    std::to_string(bl * (tl + 1)));
    m.reserve(bl, tl, grad != nullptr);
    const double start = now();
    double collective = 0;
    m.attention_s = 0;

    // Inputs and next-token targets of every local token.
    std::vector<std::int32_t> inputs(static_cast<std::size_t>(n)), targets(static_cast<std::size_t>(n));
    for (std::int64_t b = 0; b < bl; ++b)
        for (std::int64_t t = 0; t < tl; ++t) {
            inputs[static_cast<std::size_t>(b * tl + t)] = shard.ids[static_cast<std::size_t>(b * (tl + 1) + t)];
            targets[static_cast<std::size_t>(b * tl + t)] = shard.ids[static_cast<std::size_t>(b * (tl + 1) + t + 1)];
        }
    if (n > 0) {
        CUDA_CHECK(cudaMemcpyAsync(m.inputs.data(), inputs.data(), n * 4, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaMemcpyAsync(m.targets.data(), targets.data(), n * 4, cudaMemcpyHostToDevice, stream));
    }
    // Every block's beta, from its log_beta.
    std::vector<double> betas(static_cast<std::size_t>(layers));
    for (int l = 0; l < layers; ++l) {
        float log_beta = 0;
        CUDA_CHECK(cudaMemcpyAsync(&log_beta, params + m.layout.blocks[static_cast<std::size_t>(l)].log_beta,
                                   sizeof(float), cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        betas[static_cast<std::size_t>(l)] = std::exp(double(log_beta));
    }
    // The weights in the compute dtype.
    if (m.options.dtype == DType::f32) {
        m.w_base = params;
    } else {
        from_float32(m.layout.size(), params, m.weights.data(), m.options.dtype, stream);
        m.w_base = m.weights.data();
    }
    const std::int32_t* in_ids = as<std::int32_t>(m.inputs);
    const std::int32_t* out_ids = as<std::int32_t>(m.targets);

    embedding_forward(n, c, params + m.layout.embedding, in_ids, m.x(0), stream);
    for (int l = 0; l < layers; ++l)
        collective += m.forward_block(sp, params, l, betas[static_cast<std::size_t>(l)], m.cache(grad ? l : 0), shape, true,
                                      grad && !m.options.recompute);

    // Final norm, tied head and cross-entropy, in passes of head_rows tokens; with a gradient,
    // each pass also runs the head's backward: dE += dlogits^T hf, dhf = dlogits E.
    const float* x_final = m.x(layers);
    rmsnorm_forward(n, c, x_final, params + m.layout.final_norm, m.h.data(), m.options.dtype, as<float>(m.inv_final),
                    stream);
    const std::int64_t rows = head_rows(vocab);
    for (std::int64_t r0 = 0; r0 < n; r0 += rows) {
        const std::int64_t r = std::min(rows, n - r0);
        m.gemm(false, true, r, vocab, c, 1.0f, m.in(m.h.data(), c, r0), m.w(m.layout.embedding, c), 0.0f,
               Impl::f32(as<float>(m.logits), vocab));
        cross_entropy(r, vocab, as<float>(m.logits), out_ids + r0, loss_scale, grad ? m.dlogits.data() : nullptr,
                      m.options.dtype, as<double>(m.loss_parts) + r0 / cross_entropy_rows,
                      predictions ? as<std::int32_t>(m.predictions) + r0 : nullptr, stream);
        if (grad) {
            m.gemm(true, false, vocab, c, r, 1.0f, m.in(m.dlogits.data(), vocab), m.in(m.h.data(), c, r0), 1.0f,
                   Impl::f32(grad + m.layout.embedding, c));
            m.gemm(false, false, r, c, vocab, 1.0f, m.in(m.dlogits.data(), vocab), m.w(m.layout.embedding, c), 0.0f,
                   Impl::f32(as<float>(m.dh) + r0 * c, c));
        }
    }
    sum_doubles(as<double>(m.loss_parts), (n + cross_entropy_rows - 1) / cross_entropy_rows, as<double>(m.loss), stream);

    if (grad) {
        float* dxp = as<float>(m.dx);
        if (n > 0) CUDA_CHECK(cudaMemsetAsync(dxp, 0, n * c * sizeof(float), stream));
        rmsnorm_backward_input(n, c, x_final, params + m.layout.final_norm, as<float>(m.inv_final), as<float>(m.dh),
                               dxp, stream);
        rmsnorm_backward_gain(n, c, x_final, as<float>(m.inv_final), as<float>(m.dh), grad + m.layout.final_norm,
                              as<float>(m.gain_work), stream);
        for (int l = static_cast<int>(layers) - 1; l >= 0; --l) {
            const double beta = betas[static_cast<std::size_t>(l)];
            if (m.options.recompute) collective += m.forward_block(sp, params, l, beta, m.cache(l), shape, false, true);
            collective += m.backward_block(sp, params, grad, l, beta, m.cache(l), shape);
        }
        // Embedding: dE += one_hot(inputs)^T dx, in passes of head_rows tokens.
        from_float32(n * c, dxp, m.dxa.data(), m.options.dtype, stream);
        for (std::int64_t r0 = 0; r0 < n; r0 += rows) {
            const std::int64_t r = std::min(rows, n - r0);
            one_hot(r, vocab, in_ids + r0, m.dlogits.data(), m.options.dtype, stream);
            m.gemm(true, false, vocab, c, r, 1.0f, m.in(m.dlogits.data(), vocab), m.in(m.dxa.data(), c, r0), 1.0f,
                   Impl::f32(grad + m.layout.embedding, c));
        }
    }

    double loss = 0;
    CUDA_CHECK(cudaMemcpyAsync(&loss, m.loss.data(), sizeof(double), cudaMemcpyDeviceToHost, stream));
    if (predictions) predictions->resize(static_cast<std::size_t>(n));
    if (predictions && n > 0) {
        CUDA_CHECK(cudaMemcpyAsync(predictions->data(), m.predictions.data(), n * 4, cudaMemcpyDeviceToHost, stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
    const double total = now() - start;
    times.collective_s += collective;
    times.compute_s += total - collective;
    times.attention_s += m.attention_s;
    return loss;
}

}  // namespace racesp::model::gpu
