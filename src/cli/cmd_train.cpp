// racesp train: trains the RACE transformer (src/model) on a token file from racesp prep.
// Ranks form a grid (--sp-size ranks per sequence, the rest data-parallel over the batch): each
// rank reads only its token range of each window of its batch entries, the attention layers
// exchange RACE states inside the sequence-parallel group, and the parameter gradients are
// summed over the whole world, so every rank takes the same optimiser step on the same
// replicated parameters. Checkpoints are HDF5 files written by rank 0 (checkpoint.hpp).
// --device picks the trainer (trainer.hpp): the CPU model, or the GPU model with one GPU per rank;
// everything else here (data, schedule, metrics, checkpoints) is the same for both.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "checkpoint.hpp"
#include "commands.hpp"
#include "data_order.hpp"
#include "device.hpp"
#include "metrics.hpp"
#include "model.hpp"
#include "optimizer.hpp"
#include "options.hpp"
#include "progress.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"
#include "token_file.hpp"
#include "trainer.hpp"

namespace racesp::cli {

namespace {

namespace fs = std::filesystem;
using model::ModelConfig;
using model::OptimizerConfig;

struct TrainArgs {
    std::string data, metrics, checkpoint_dir = "checkpoints";
    ModelConfig model;
    OptimizerConfig opt;
    Seed seed;
    Count seq_len{256};
    std::int64_t batch = 8, steps = 100, stop_at = 0, checkpoint_every = 0, keep = 3, val_every = 0, val_batches = 4,
                 log_every = 10;
    int sp_size = 0;
    bool resume = false, quiet = false;
    std::string device = "cpu";
    TrainDevice where;
};

po::options_description train_options(TrainArgs& a) {
    po::options_description options("options", 100, 40);
    ModelConfig& m = a.model;
    OptimizerConfig& o = a.opt;
    options.add_options()
        ("data", po::value<std::string>(&a.data)->required()->value_name("FILE"),
         "token file from racesp prep (datasets tokens, val_tokens)")
        ("layers", po::value<int>(&m.layers)->default_value(m.layers)->value_name("N"), "transformer blocks")
        ("width", po::value<int>(&m.width)->default_value(m.width)->value_name("C"), "model width")
        ("heads", po::value<int>(&m.heads)->default_value(m.heads)->value_name("H"), "attention heads (divide --width)")
        ("tables", po::value<int>(&m.tables)->default_value(m.tables)->value_name("L"), "RACE hash tables per head")
        ("planes", po::value<int>(&m.planes)->default_value(m.planes)->value_name("P"), "hyperplanes per table (1..10)")
        ("beta", po::value<double>(&m.beta)->default_value(m.beta, "1")->value_name("B"),
         "initial soft-hash temperature of every layer (learned)")
        ("seq-len", po::value<Count>(&a.seq_len)->default_value(a.seq_len, "256")->value_name("T"),
         "tokens per sequence (1M, ...)")
        ("batch", po::value<std::int64_t>(&a.batch)->default_value(a.batch)->value_name("B"),
         "sequences per step over all data-parallel groups")
        ("steps", po::value<std::int64_t>(&a.steps)->default_value(a.steps)->value_name("N"),
         "optimiser steps; the learning-rate schedule spans them")
        ("stop-at", po::value<std::int64_t>(&a.stop_at)->default_value(0, "--steps")->value_name("N"),
         "stop after step N (the schedule still spans --steps); resume later with --resume")
        ("lr", po::value<double>(&o.lr)->default_value(o.lr, "1e-3")->value_name("LR"), "peak learning rate")
        ("warmup", po::value<std::int64_t>(&o.warmup)->default_value(o.warmup)->value_name("N"), "linear warm-up steps")
        ("min-lr-ratio", po::value<double>(&o.min_lr_ratio)->default_value(o.min_lr_ratio, "0.1")->value_name("R"),
         "cosine decay ends at R * --lr")
        ("weight-decay", po::value<double>(&o.weight_decay)->default_value(o.weight_decay, "0")->value_name("W"),
         "AdamW decoupled weight decay (matrices and embedding)")
        ("clip", po::value<double>(&o.clip)->default_value(o.clip, "1")->value_name("G"),
         "clip the global gradient norm to G (0: off)")
        ("seed", po::value<Seed>(&a.seed)->default_value(a.seed, "0")->value_name("S"),
         "seed of the initial parameters, the planes and the data order")
        ("sp-size", po::value<int>(&a.sp_size)->default_value(0, "all ranks")->value_name("N"),
         "ranks per sequence; the other factor is data-parallel")
        ("device", po::value<std::string>(&a.device)->default_value(a.device)->value_name("DEV"),
         "cpu | cuda (one GPU per rank: the rank's local index picks it)")
        ("precision", po::value<std::string>(&a.where.precision)->default_value(a.where.precision)->value_name("P"),
         "cuda: bf16 (bfloat16 activations and tensor-core products, float32 master weights) | fp32")
        ("recompute", po::bool_switch(&a.where.recompute),
         "cuda: recompute each block's forward in the backward: one block's activations in memory instead of "
         "all, for longer sequences, at about a third more work")
        ("metrics", po::value<std::string>(&a.metrics)->value_name("FILE"),
         "JSON lines, one per step (step, loss, lr, grad_norm, tokens_per_s, ...); appended to with --resume")
        ("checkpoint-dir", po::value<std::string>(&a.checkpoint_dir)->default_value(a.checkpoint_dir)->value_name("DIR"),
         "where checkpoints go (step-NNNNNNNN.h5)")
        ("checkpoint-every", po::value<std::int64_t>(&a.checkpoint_every)->default_value(0)->value_name("N"),
         "write a checkpoint every N steps and at the last step (0: never)")
        ("keep", po::value<std::int64_t>(&a.keep)->default_value(a.keep)->value_name("K"), "keep the newest K checkpoints")
        ("resume", po::bool_switch(&a.resume), "continue from the newest checkpoint in --checkpoint-dir (if any)")
        ("val-every", po::value<std::int64_t>(&a.val_every)->default_value(0)->value_name("N"),
         "validation loss on val_tokens every N steps (0: never)")
        ("val-batches", po::value<std::int64_t>(&a.val_batches)->default_value(a.val_batches)->value_name("N"),
         "batches of --batch windows per validation")
        ("log-every", po::value<std::int64_t>(&a.log_every)->default_value(a.log_every)->value_name("N"),
         "progress line on stderr every N steps")
        ("quiet", po::bool_switch(&a.quiet), "no progress lines on stderr");
    add_common_options(options);
    return options;
}

const char* const usage = "racesp train --data tokens.h5 [--layers N --width C --heads H --seq-len T --batch B "
                          "--steps N ...]";
const char* const description =
    "Trains a decoder-only transformer with causal RACE attention on a token file from racesp prep.\n"
    "Under mpirun, each sequence is sharded over --sp-size ranks (each rank reads only its shard of every\n"
    "window); the other factor of the ranks is data-parallel. AdamW with warm-up and cosine decay,\n"
    "gradient clipping, periodic validation, HDF5 checkpoints with --resume. --device cuda trains on\n"
    "one GPU per rank (cuBLAS, bf16 activations, float32 master weights, NCCL); checkpoints move\n"
    "between CPU and GPU runs.";

// The model-defining values that a checkpoint must share with this run.
std::vector<std::pair<std::string, std::int64_t>> model_keys(const ModelConfig& m) {
    return {{"layers", m.layers}, {"width", m.width}, {"heads", m.heads}, {"tables", m.tables},
            {"planes", m.planes}, {"vocab", m.vocab}, {"seed", static_cast<std::int64_t>(m.seed)}};
}

nlohmann::json config_json(const TrainArgs& a, int ranks, int sp_size) {
    return {{"data", a.data}, {"layers", a.model.layers}, {"width", a.model.width}, {"heads", a.model.heads},
            {"tables", a.model.tables}, {"planes", a.model.planes}, {"beta", a.model.beta},
            {"vocab", a.model.vocab}, {"seq_len", a.seq_len.value}, {"batch", a.batch}, {"steps", a.steps},
            {"lr", a.opt.lr}, {"warmup", a.opt.warmup}, {"min_lr_ratio", a.opt.min_lr_ratio},
            {"weight_decay", a.opt.weight_decay}, {"clip", a.opt.clip}, {"adam_beta1", a.opt.beta1},
            {"adam_beta2", a.opt.beta2}, {"adam_eps", a.opt.eps}, {"seed", a.seed.value},
            {"ranks", ranks}, {"sp_size", sp_size}, {"attention", "causal RACE, kernel normalization"},
            {"device", a.where.describe()}};
}

// Checkpoints in `dir` by step, oldest first.
std::vector<std::pair<std::int64_t, fs::path>> list_checkpoints(const std::string& dir) {
    std::vector<std::pair<std::int64_t, fs::path>> found;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return found;
    static const std::regex name("step-([0-9]+)\\.h5");
    std::smatch match;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        std::string file = entry.path().filename().string();
        if (std::regex_match(file, match, name)) found.emplace_back(std::stoll(match[1].str()), entry.path());
    }
    std::sort(found.begin(), found.end());
    return found;
}

std::string checkpoint_name(std::int64_t step) {
    char name[32];
    std::snprintf(name, sizeof name, "step-%08lld.h5", static_cast<long long>(step));
    return name;
}

// Reads this rank's shard of `batch_size` windows (positions first .. first + n - 1 of the
// order) into shard: tokens [start + begin, start + end + 1) of each window, the extra one
// being the last target.
void read_shard(const io::TokenFile& file, const io::TokenStream& stream, std::int64_t vocab, std::int64_t seq_len,
                const std::vector<std::int64_t>& windows, TokenRange tokens, model::ShardTokens& shard) {
    shard.batch = static_cast<std::int64_t>(windows.size());
    shard.tokens = tokens.size();
    shard.ids.assign(static_cast<std::size_t>(shard.batch * (shard.tokens + 1)), 0);
    for (std::size_t b = 0; b < windows.size(); ++b) {
        std::int32_t* dst = shard.ids.data() + b * static_cast<std::size_t>(shard.tokens + 1);
        file.read(stream, windows[b] * seq_len + tokens.begin, shard.tokens + 1, dst);
        for (std::int64_t i = 0; i <= shard.tokens; ++i)
            if (dst[i] < 0 || dst[i] >= vocab)
                throw InputError("token file '" + file.path() + "': token " + std::to_string(dst[i]) + " at " +
                                 stream.name + "[" + std::to_string(windows[b] * seq_len + tokens.begin + i) +
                                 "] is outside the vocabulary of " + std::to_string(vocab));
    }
}

std::string fixed(double v, int digits) {
    char text[64];
    std::snprintf(text, sizeof text, "%.*f", digits, v);
    return text;
}

}  // namespace

std::string train_help() {
    TrainArgs a;
    return help_text(usage, description, train_options(a));
}

int run_train(MPI_Comm world, const Args& args) {
    const double start = MPI_Wtime();
    int rank = 0, ranks = 1;
    MPI_Comm_rank(world, &rank);
    MPI_Comm_size(world, &ranks);

    TrainArgs a;
    po::options_description options = train_options(a);
    bool run = true;
    run_collectively(world, [&] {
        run = parse_options("train", args, options);
        if (!run) return;
        a.model.seed = a.seed.value;
        a.model.validate();
        require_at_least("--seq-len", a.seq_len.value, 1);
        require_at_least("--batch", a.batch, 1);
        require_at_least("--steps", a.steps, 1);
        require_at_least("--stop-at", a.stop_at, 0);
        require_at_least("--warmup", a.opt.warmup, 0);
        require_at_least("--checkpoint-every", a.checkpoint_every, 0);
        require_at_least("--keep", a.keep, 1);
        require_at_least("--val-every", a.val_every, 0);
        require_at_least("--val-batches", a.val_batches, 1);
        require_at_least("--log-every", a.log_every, 1);
        if (!(a.opt.lr > 0)) throw ConfigError("--lr must be positive, got " + std::to_string(a.opt.lr));
        if (!(a.opt.clip >= 0)) throw ConfigError("--clip must be at least 0, got " + std::to_string(a.opt.clip));
        if (!(a.opt.weight_decay >= 0))
            throw ConfigError("--weight-decay must be at least 0, got " + std::to_string(a.opt.weight_decay));
        if (a.sp_size < 0) throw ConfigError("--sp-size must be at least 1 (or 0 for all ranks)");
        if (a.sp_size == 0) a.sp_size = ranks;
        if (ranks % a.sp_size != 0)
            throw ConfigError("--sp-size " + std::to_string(a.sp_size) + " must divide the number of ranks (" +
                              std::to_string(ranks) + ")");
        if (a.batch < ranks / a.sp_size)
            throw ConfigError("--batch " + std::to_string(a.batch) + " is smaller than the " +
                              std::to_string(ranks / a.sp_size) + " data-parallel groups; every group needs a sequence");
        if (a.stop_at == 0 || a.stop_at > a.steps) a.stop_at = a.steps;
        a.opt.steps = a.steps;
        a.where.device = parse_device(a.device);
        a.where.validate();
        require_device(a.where.device);  // cuda: the GPU at this rank's local index, or one clear error
    });
    if (!run) {
        print_on_root(world, train_help());
        return 0;
    }
    const bool talk = rank == 0 && !a.quiet;
    const std::int64_t seq_len = a.seq_len.value;
    if (!a.metrics.empty()) check_writable_file(world, a.metrics, "--metrics", {a.data});

    // The data: every rank opens the file for its own reads.
    std::unique_ptr<io::TokenFile> file;
    io::TokenStream train_stream, val_stream, scored_stream;
    bool scored = false;  // val_scored present: validation also reports the accuracy there
    std::int64_t windows = 0, val_windows = 0;
    run_collectively(world, [&] {
        file = std::make_unique<io::TokenFile>(a.data);
        train_stream = file->inspect("tokens");
        a.model.vocab = static_cast<int>(file->vocab(train_stream));
        windows = model::window_count(train_stream.length, seq_len);
        if (windows == 0)
            throw InputError("token file '" + a.data + "' holds " + std::to_string(train_stream.length) +
                             " tokens in 'tokens'; one window of --seq-len " + std::to_string(seq_len) + " needs " +
                             std::to_string(seq_len + 1));
        if (a.val_every > 0) {
            val_stream = file->inspect("val_tokens");
            val_windows = std::min(model::window_count(val_stream.length, seq_len), a.val_batches * a.batch);
            if (val_windows == 0)
                throw InputError("token file '" + a.data + "' holds " + std::to_string(val_stream.length) +
                                 " tokens in 'val_tokens'; one validation window of --seq-len " +
                                 std::to_string(seq_len) + " needs " + std::to_string(seq_len + 1) +
                                 " (or leave out --val-every)");
            scored = file->contains("val_scored");
            if (scored) {
                scored_stream = file->inspect("val_scored");
                if (scored_stream.length != val_stream.length)
                    throw InputError("token file '" + a.data + "': 'val_scored' has " +
                                     std::to_string(scored_stream.length) + " entries, 'val_tokens' " +
                                     std::to_string(val_stream.length));
            }
        }
    });

    ProcessGrid grid(world, a.sp_size);
    const TokenRange my_tokens = grid.tokens(seq_len);
    const TokenRange my_batch = grid.batch(a.batch);
    std::unique_ptr<model::Trainer> trainer = make_trainer(a.where, a.model, a.opt, world, grid.sp_comm());
    const model::ParameterLayout& layout = trainer->layout();
    // Host copies of the parameters and moments: initial values, checkpoints.
    std::vector<float> params = model::initial_parameters(a.model, layout);
    std::vector<float> adam_m(params.size(), 0.0f), adam_v(params.size(), 0.0f);
    std::int64_t step = 0, position = 0;
    // Room for a step on this rank's shard (GPU memory), or one error naming what does not fit.
    std::size_t device_bytes = 0;
    run_collectively(world, [&] { device_bytes = trainer->prepare(my_batch.size(), my_tokens.size()); });
    if (talk && a.where.device != Device::cpu)
        std::fprintf(stderr, "racesp: train: %s; rank 0 holds %s of GPU buffers for %lld x %lld tokens\n",
                     a.where.describe().c_str(), human_bytes(double(device_bytes)).c_str(),
                     static_cast<long long>(my_batch.size()), static_cast<long long>(my_tokens.size()));

    if (a.resume) {
        std::string from;
        if (rank == 0) {
            auto found = list_checkpoints(a.checkpoint_dir);
            if (!found.empty()) from = found.back().second.string();
        }
        int length = static_cast<int>(from.size());
        MPI_Bcast(&length, 1, MPI_INT, 0, world);
        from.resize(static_cast<std::size_t>(length));
        MPI_Bcast(from.data(), length, MPI_CHAR, 0, world);
        if (from.empty()) {
            if (talk) std::fprintf(stderr, "racesp: train: no checkpoint in '%s'; starting at step 0\n", a.checkpoint_dir.c_str());
        } else {
            run_collectively(world, [&] {
                io::CheckpointReader reader(from);
                for (const auto& [key, value] : model_keys(a.model)) {
                    const std::int64_t theirs = reader.integer(key);
                    if (theirs != value)
                        throw InputError("checkpoint '" + from + "' is from another configuration: " + key + " " +
                                         std::to_string(theirs) + " there, " + std::to_string(value) + " here");
                }
                for (const model::ParameterTensor& t : layout.tensors()) {
                    auto copy = [&](const std::string& group, std::vector<float>& into) {
                        std::vector<float> v = reader.array(group + "/" + t.name, t.size);
                        std::copy(v.begin(), v.end(), into.begin() + t.offset);
                    };
                    copy("params", params);
                    copy("adam_m", adam_m);
                    copy("adam_v", adam_v);
                }
                step = reader.integer("step");
                position = reader.integer("data_position");
                if (step < 0 || position < 0) throw InputError("checkpoint '" + from + "' has a negative step");
                for (float v : params)
                    if (!std::isfinite(v)) throw InputError("checkpoint '" + from + "' holds non-finite parameters");
            });
            if (talk) std::fprintf(stderr, "racesp: train: resuming from '%s' at step %lld\n", from.c_str(),
                                   static_cast<long long>(step));
        }
    }
    trainer->set_state(params, adam_m, adam_v);

    // Metrics: a fresh file, or appended to when resuming.
    std::ofstream metrics;
    run_collectively(world, [&] {
        if (rank != 0 || a.metrics.empty()) return;
        metrics.open(a.metrics, a.resume ? std::ios::app : std::ios::trunc);
        if (!metrics) throw InputError("cannot write --metrics '" + a.metrics + "'");
    });
    if (a.checkpoint_every > 0)
        run_collectively(world, [&] {
            if (rank != 0) return;
            std::error_code ec;
            fs::create_directories(a.checkpoint_dir, ec);
            if (!fs::is_directory(a.checkpoint_dir))
                throw InputError("cannot create --checkpoint-dir '" + a.checkpoint_dir + "'" +
                                 (ec ? ": " + ec.message() : std::string()));
        });

    const double tokens_per_step = double(a.batch) * double(seq_len);
    const double scale = 1.0 / tokens_per_step;
    model::WindowOrder order(a.seed.value, windows);
    model::ShardTokens shard;
    const std::int64_t first_step = step + 1;
    double first_loss = NAN, last_loss = NAN, last_val = NAN, rate_sum = 0;
    std::int64_t rate_steps = 0;
    std::string last_checkpoint;

    // Mean validation loss and, with val_scored, the share of scored tokens predicted exactly.
    double last_accuracy = NAN;
    auto validation_loss = [&] {
        double sum[3] = {0, 0, 0};  // loss, scored tokens right, scored tokens
        std::vector<std::int32_t> predictions, marks(static_cast<std::size_t>(my_tokens.size()));
        for (std::int64_t first = 0; first < val_windows; first += a.batch) {
            const std::int64_t n = std::min(a.batch, val_windows - first);
            // Each data-parallel group takes its share of this batch; a group with none skips
            // it as a whole (its sp ranks agree), so no collective is left waiting.
            const TokenRange part = shard_range(n, grid.dp_rank(), grid.dp_size());
            std::vector<std::int64_t> ws;
            for (std::int64_t i = part.begin; i < part.end; ++i) ws.push_back(first + i);
            if (!ws.empty()) {
                run_collectively(grid.sp_comm(), [&] { read_shard(*file, val_stream, a.model.vocab, seq_len, ws, my_tokens, shard); });
                sum[0] += trainer->evaluate(shard, scored ? &predictions : nullptr);
                for (std::size_t b = 0; scored && b < ws.size(); ++b) {
                    // The target of local token t is token t + 1 of the window.
                    run_collectively(grid.sp_comm(), [&] {
                        file->read(scored_stream, ws[b] * seq_len + my_tokens.begin + 1, my_tokens.size(), marks.data());
                    });
                    for (std::int64_t t = 0; t < my_tokens.size(); ++t) {
                        if (!marks[static_cast<std::size_t>(t)]) continue;
                        const std::size_t i = b * static_cast<std::size_t>(my_tokens.size()) + static_cast<std::size_t>(t);
                        sum[1] += predictions[i] == shard.ids[b * static_cast<std::size_t>(my_tokens.size() + 1) + static_cast<std::size_t>(t) + 1];
                        sum[2] += 1;
                    }
                }
            }
        }
        double total[3] = {0, 0, 0};
        MPI_Allreduce(sum, total, 3, MPI_DOUBLE, MPI_SUM, world);
        if (scored) last_accuracy = total[2] > 0 ? total[1] / total[2] : NAN;
        return total[0] / (double(val_windows) * double(seq_len));
    };

    for (step = first_step; step <= a.stop_at; ++step) {
        const double step_start = MPI_Wtime();
        std::vector<std::int64_t> ws;
        for (std::int64_t i = my_batch.begin; i < my_batch.end; ++i) ws.push_back(order.window(position + i));
        run_collectively(world, [&] { read_shard(*file, train_stream, a.model.vocab, seq_len, ws, my_tokens, shard); });
        position += a.batch;

        // Forward, backward, the gradient and loss summed over the world (float64), AdamW.
        const model::Trainer::StepResult result = trainer->step(step, shard, scale);
        const model::PassTimes& times = result.times;
        const double reduce_s = result.reduce_s, loss = result.loss, norm = result.grad_norm;
        const double lr = model::learning_rate(a.opt, step);
        const double step_s = MPI_Wtime() - step_start;
        const double rate = tokens_per_step / step_s;
        if (step > first_step) {  // the first step warms caches
            rate_sum += rate;
            ++rate_steps;
        }
        if (std::isnan(first_loss)) first_loss = loss;
        last_loss = loss;
        check_all(world, std::isfinite(loss), "the loss is not finite at step " + std::to_string(step) +
                                                  " (try a lower --lr or --clip)");

        nlohmann::json line = {{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm},
                               {"tokens", static_cast<std::int64_t>(tokens_per_step)}, {"tokens_per_s", rate},
                               {"step_s", step_s}, {"compute_s", times.compute_s},
                               {"collective_s", times.collective_s + reduce_s}};
        if (a.where.device != Device::cpu) line["attention_s"] = times.attention_s;
        line["beta"] = trainer->betas();
        if (a.val_every > 0 && (step % a.val_every == 0 || step == a.stop_at)) {
            last_val = validation_loss();
            line["val_loss"] = last_val;
            if (scored) line["val_accuracy"] = last_accuracy;
        }
        if (rank == 0 && metrics.is_open()) metrics << line.dump() << "\n" << std::flush;
        if (talk && (step % a.log_every == 0 || step == first_step || step == a.stop_at))
            std::fprintf(stderr, "step %lld/%lld  loss %s%s  lr %.3g  |g| %.3g  %s tokens/s  (compute %.3fs, collective %.3fs)\n",
                         static_cast<long long>(step), static_cast<long long>(a.steps), fixed(loss, 4).c_str(),
                         !line.contains("val_loss") ? ""
                         : ("  val " + fixed(last_val, 4) +
                            (scored ? "  val accuracy " + fixed(100 * last_accuracy, 1) + "%" : std::string())).c_str(),
                         lr, norm,
                         human_count(rate).c_str(), times.compute_s, times.collective_s + reduce_s);

        if (a.checkpoint_every > 0 && (step % a.checkpoint_every == 0 || step == a.stop_at)) {
            const fs::path path = fs::path(a.checkpoint_dir) / checkpoint_name(step);
            if (rank == 0) trainer->get_state(params, adam_m, adam_v);
            run_collectively(world, [&] {
                if (rank != 0) return;
                io::Checkpoint c;
                for (const model::ParameterTensor& t : layout.tensors()) {
                    auto slice = [&](const std::vector<float>& v) {
                        return std::vector<float>(v.begin() + t.offset, v.begin() + t.offset + t.size);
                    };
                    c.arrays.emplace_back("params/" + t.name, slice(params));
                    c.arrays.emplace_back("adam_m/" + t.name, slice(adam_m));
                    c.arrays.emplace_back("adam_v/" + t.name, slice(adam_v));
                }
                c.integers = model_keys(a.model);
                c.integers.emplace_back("step", step);
                c.integers.emplace_back("data_position", position);
                // The only randomness of training is the data order, a pure function of
                // (seed, position): seed and position are its whole state.
                c.integers.emplace_back("data_seed", static_cast<std::int64_t>(a.seed.value));
                c.integers.emplace_back("seq_len", seq_len);
                c.integers.emplace_back("batch", a.batch);
                c.texts.emplace_back("config", config_json(a, ranks, a.sp_size).dump());
                io::write_checkpoint(path.string(), c);
                auto found = list_checkpoints(a.checkpoint_dir);
                for (std::size_t i = 0; i + static_cast<std::size_t>(a.keep) < found.size(); ++i) fs::remove(found[i].second);
            });
            last_checkpoint = path.string();
        }
    }

    const double wall = MPI_Wtime() - start;
    const std::int64_t done = a.stop_at - first_step + 1;
    std::string summary = "racesp: train: ";
    if (done <= 0) {
        summary += "nothing to do: step " + std::to_string(first_step - 1) + " of " + std::to_string(a.steps) + " done";
    } else {
        summary += "steps " + std::to_string(first_step) + ".." + std::to_string(a.stop_at) + " of " +
                   std::to_string(a.steps) + ", loss " + fixed(first_loss, 4) + " -> " + fixed(last_loss, 4);
        if (!std::isnan(last_val))
            summary += " (val " + fixed(last_val, 4) +
                       (scored ? ", accuracy " + fixed(100 * last_accuracy, 1) + "%" : std::string()) + ")";
        summary += ", " + std::to_string(ranks) + " rank" + (ranks > 1 ? "s" : "") + " (sp " +
                   std::to_string(a.sp_size) + " x dp " + std::to_string(ranks / a.sp_size) + "), " +
                   (a.where.device == Device::cpu ? std::string() : a.where.describe() + ", ") +
                   human_count(rate_steps > 0 ? rate_sum / double(rate_steps) : tokens_per_step / wall) +
                   " tokens/s, wall " + human_duration(wall);
        if (!last_checkpoint.empty()) summary += " -> " + last_checkpoint;
    }
    print_on_root(world, summary + "\n");
    return 0;
}

}  // namespace racesp::cli
