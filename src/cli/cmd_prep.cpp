// racesp prep: text files -> a byte-level token file for racesp train (token_file.hpp). The
// files are concatenated in the order given; the last --val-fraction of the stream is held out
// as `val_tokens`. Rank 0 does the work (it is I/O bound and small next to training); under
// mpirun the other ranks only share its errors.
#include <mpi.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "commands.hpp"
#include "options.hpp"
#include "progress.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"
#include "racesp/io.hpp"
#include "token_file.hpp"

namespace racesp::cli {

namespace {

struct PrepArgs {
    std::vector<std::string> inputs;
    std::string output;
    double val_fraction = 0.05;
    bool overwrite = false;
};

po::options_description prep_options(PrepArgs& a) {
    po::options_description options("options", 100, 40);
    options.add_options()
        ("input", po::value<std::vector<std::string>>(&a.inputs)->required()->multitoken()->value_name("FILES"),
         "text (or any) files, read as bytes, concatenated in this order")
        ("output", po::value<std::string>(&a.output)->required()->value_name("FILE"), "the new HDF5 token file")
        ("val-fraction", po::value<double>(&a.val_fraction)->default_value(a.val_fraction, "0.05")->value_name("F"),
         "share of the stream held out as val_tokens (its end), 0 <= F < 1")
        ("overwrite", po::bool_switch(&a.overwrite), "replace an existing output file");
    add_common_options(options);
    return options;
}

const char* const usage = "racesp prep --input FILES... --output tokens.h5 [--val-fraction 0.05]";
const char* const description =
    "Turns files into byte-level tokens (vocabulary 256) for racesp train: dataset 'tokens' (uint8, the\n"
    "training stream) and 'val_tokens' (the last --val-fraction of the stream), with attributes sources,\n"
    "source_bytes, tokens, val_tokens, val_fraction and vocab_size.";

std::vector<std::uint8_t> read_bytes(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(path, ec)) throw InputError("input file '" + path + "' does not exist");
    if (fs::is_directory(path, ec)) throw InputError("input '" + path + "' is a directory, not a file");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw InputError("cannot read input file '" + path + "'");
    std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw InputError("cannot read input file '" + path + "'");
    return bytes;
}

}  // namespace

std::string prep_help() {
    PrepArgs a;
    return help_text(usage, description, prep_options(a));
}

int run_prep(MPI_Comm world, const Args& args) {
    const double start = MPI_Wtime();
    int rank = 0;
    MPI_Comm_rank(world, &rank);
    PrepArgs a;
    po::options_description options = prep_options(a);
    bool run = true;
    run_collectively(world, [&] {
        run = parse_options("prep", args, options);
        if (!run) return;
        if (!(a.val_fraction >= 0 && a.val_fraction < 1))
            throw ConfigError("--val-fraction must be in [0, 1), got " + std::to_string(a.val_fraction));
    });
    if (!run) {
        print_on_root(world, prep_help());
        return 0;
    }
    io::check_output_path(world, a.output, a.inputs, a.overwrite);

    io::TokenFileContents contents;
    run_collectively(world, [&] {
        if (rank != 0) return;
        std::vector<std::uint8_t> stream;
        for (const std::string& path : a.inputs) {
            std::vector<std::uint8_t> bytes = read_bytes(path);
            contents.sources.push_back(path);
            contents.source_bytes.push_back(static_cast<std::int64_t>(bytes.size()));
            stream.insert(stream.end(), bytes.begin(), bytes.end());
        }
        const auto total = static_cast<std::int64_t>(stream.size());
        const auto val = static_cast<std::int64_t>(std::llround(a.val_fraction * double(total)));
        if (total - val < 2)
            throw InputError("the inputs hold " + std::to_string(total) + " bytes, " + std::to_string(total - val) +
                             " for training; at least 2 are needed");
        contents.val_fraction = a.val_fraction;
        contents.val_tokens.assign(stream.end() - val, stream.end());
        stream.resize(static_cast<std::size_t>(total - val));
        contents.tokens = std::move(stream);
        io::write_token_file(a.output, contents);
    });
    print_on_root(world, "racesp: prep: " + std::to_string(contents.tokens.size()) + " training tokens + " +
                             std::to_string(contents.val_tokens.size()) + " validation tokens from " +
                             std::to_string(contents.sources.size()) + " file" +
                             (contents.sources.size() == 1 ? "" : "s") + " in " +
                             human_duration(MPI_Wtime() - start) + " -> " + a.output + "\n");
    return 0;
}

}  // namespace racesp::cli
