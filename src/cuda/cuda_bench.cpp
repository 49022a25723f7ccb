// racesp_cuda_bench: forward + backward timings of the CUDA engine as JSON lines (one per
// configuration), on one GPU or sequence-parallel over MPI ranks with NCCL (one GPU per rank):
// racesp/cuda_bench.hpp's timings with every engine option on the command line (chunk, segment,
// collectives through MPI, recomputed key totals) for the kernel studies in experiments/.
// `racesp bench --device cuda` runs the same timings with the racesp command's options.
#include <cuda_runtime.h>
#include <mpi.h>

#include <boost/program_options.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cuda_check.hpp"
#include "racesp/cuda_bench.hpp"
#include "racesp/cuda_distributed.hpp"
#include "racesp/errors.hpp"
#include "racesp/mpi_collectives.hpp"
#ifdef RACESP_HAVE_NCCL
#include "racesp/nccl_collectives.hpp"
#endif

namespace po = boost::program_options;
using namespace racesp;
using namespace racesp::cuda;

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int status = 0;
    try {
        BenchSetup b;
        std::string collectives = "nccl";
        std::int64_t tokens = 8 << 20, tokens_per_rank = 0;
        std::string mode = "both", dtype = "bf16", norm = "kernel", out_file;
        bool max_tokens = false;
        po::options_description opts("racesp_cuda_bench options");
        opts.add_options()("help", "this help")
            ("tokens", po::value(&tokens)->default_value(tokens), "sequence length (all ranks together)")
            ("tokens-per-rank", po::value(&tokens_per_rank), "weak scaling: tokens per rank (overrides --tokens)")
            ("batch", po::value(&b.batch)->default_value(1), "B")
            ("heads", po::value(&b.heads)->default_value(4), "H")
            ("dim", po::value(&b.dim)->default_value(128), "D")
            ("planes", po::value(&b.config.planes)->default_value(4), "P")
            ("tables", po::value(&b.config.tables)->default_value(4), "L")
            ("beta", po::value(&b.config.beta)->default_value(1.0), "beta")
            ("normalization", po::value(&norm)->default_value("kernel"), "kernel|bucket")
            ("dtype", po::value(&dtype)->default_value("bf16"), "fp32|bf16|fp16")
            ("mode", po::value(&mode)->default_value("both"), "causal|full|both")
            ("runs", po::value(&b.runs)->default_value(5), "timed runs (median)")
            ("warmup", po::value(&b.warmup)->default_value(1), "untimed runs first")
            ("chunk", po::value(&b.engine.chunk)->default_value(0), "tokens per chunk (0: auto)")
            ("segment-chunks", po::value(&b.engine.segment_chunks)->default_value(EngineOptions{}.segment_chunks),
             "chunks per segment, at most")
            ("collectives", po::value(&collectives)->default_value("nccl"), "nccl|mpi (MPI through pinned host memory)")
            ("recompute-key-totals", po::bool_switch(&b.recompute_key_totals),
             "the backward recomputes the key totals instead of reusing the forward's")
            ("max-tokens", po::bool_switch(&max_tokens), "search the longest sequence that fits")
            ("out", po::value(&out_file), "also append the JSON lines to this file");
        po::variables_map vm;
        po::store(po::parse_command_line(argc, argv, opts), vm);
        po::notify(vm);
        if (vm.count("help")) {
            if (rank == 0) std::cout << opts << "\n";
            MPI_Finalize();
            return 0;
        }
        b.dtype = parse_dtype(dtype.c_str());
        b.config.normalization = parse_normalization(norm);
        if (b.runs < 1) throw ConfigError("--runs must be at least 1");
        select_local_device(MPI_COMM_WORLD);

        cudaStream_t coll_stream;
        CUDA_CHECK(cudaStreamCreateWithFlags(&coll_stream, cudaStreamNonBlocking));
        std::unique_ptr<Collectives> host, sp;
        if (collectives == "mpi") {
            host = std::make_unique<MpiCollectives>(MPI_COMM_WORLD);
            sp = std::make_unique<StagedCollectives>(*host);
        } else if (collectives == "nccl") {
#ifdef RACESP_HAVE_NCCL
            sp = std::make_unique<NcclCollectives>(MPI_COMM_WORLD, coll_stream);
#else
            throw ConfigError("built without NCCL: use --collectives mpi");
#endif
        } else {
            throw ConfigError("--collectives must be nccl or mpi");
        }

        std::vector<bool> causals;
        if (mode == "causal" || mode == "both") causals.push_back(true);
        if (mode == "full" || mode == "both") causals.push_back(false);
        if (causals.empty()) throw ConfigError("--mode must be causal, full or both");
        const std::int64_t local = tokens_per_rank > 0 ? tokens_per_rank : tokens / size;
        if (tokens_per_rank == 0 && tokens % size != 0) throw ConfigError("--tokens must divide by the rank count");

        std::ofstream out;
        if (rank == 0 && !out_file.empty()) out.open(out_file, std::ios::app);
        for (bool causal : causals) {
            b.config.causal = causal;
            b.config.validate();
            const BenchResult t = max_tokens ? bench_max_tokens(b, *sp, MPI_COMM_WORLD) : bench_step(b, *sp, MPI_COMM_WORLD, local);
            if (rank == 0) {
                const std::int64_t total = t.tokens_per_rank * size;
                nlohmann::json j;
                j["bench"] = max_tokens ? "cuda_max_tokens" : "cuda_forward_backward";
                j["gpu"] = device_name();
                j["ranks"] = size;
                j["collectives"] = collectives;
                j["batch"] = b.batch;
                j["tokens"] = total;
                j["tokens_per_rank"] = t.tokens_per_rank;
                j["heads"] = b.heads;
                j["dim"] = b.dim;
                j["planes"] = b.config.planes;
                j["tables"] = b.config.tables;
                j["normalization"] = std::string(to_string(b.config.normalization));
                j["causal"] = causal;
                j["dtype"] = to_string(b.dtype);
                j["chunk"] = b.engine.chunk;
                j["key_totals"] = b.recompute_key_totals ? "recomputed" : "reused";
                j["runs"] = max_tokens ? 1 : b.runs;
                j["median_s"] = t.median_s;
                j["min_s"] = t.min_s;
                j["max_s"] = t.max_s;
                j["forward_s"] = t.forward_s;
                j["collective_s"] = t.collective_s;
                if (!max_tokens) j["collective_alone_s"] = t.collective_alone_s;
                j["state_bytes"] = b.batch * b.heads * b.config.features() * (b.dim + 1) * 8;
                j["tokens_per_s"] = static_cast<double>(total * b.batch) / t.median_s;
                j["peak_device_bytes"] = t.peak_device_bytes;
                std::cout << j.dump() << std::endl;
                if (out) out << j.dump() << "\n";
            }
        }
        sp.reset();
        host.reset();
        cudaStreamDestroy(coll_stream);
    } catch (const std::exception& e) {
        if (rank == 0 || std::string(e.what()).find("out of memory") == std::string::npos)
            std::fprintf(stderr, "racesp_cuda_bench: %s\n", e.what());
        status = 1;
    }
    if (status != 0) MPI_Abort(MPI_COMM_WORLD, status);
    MPI_Finalize();
    return status;
}
