// Command-line and config-file options of the racesp subcommands (Boost.Program_options).
//
// Every subcommand parses the same way: its options from the command line, then from the INI
// file named by --config (long option names as keys, `tables = 8`; a [attention], [generate]
// or [bench] section applies to that command only); the command line wins. Errors are
// ConfigError with one line that names the option.
#pragma once

#include <boost/program_options.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "racesp/config.hpp"

namespace racesp::cli {

namespace po = boost::program_options;

// A count of tokens: 1000000, 1M, 2.5k, 1G (decimal multipliers).
struct Count {
    std::int64_t value = 0;
};
std::int64_t parse_count(const std::string& text);  // throws ConfigError

// A 64-bit seed, without the sign wrap-around of a plain unsigned parse ("-1").
struct Seed {
    std::uint64_t value = 0;
};

// Program_options hooks for the two types above.
void validate(boost::any& v, const std::vector<std::string>& values, Count*, int);
void validate(boost::any& v, const std::vector<std::string>& values, Seed*, int);

// The RACE attention and parallel options shared by `attention` and `bench`:
// --tables --planes --beta --seed --normalization --causal --eps --share-planes --sp-size --device.
struct RaceOptions {
    AttentionConfig config;
    std::string normalization = "kernel";
    Seed seed;
    int sp_size = 0;  // 0: every rank in one sequence-parallel group
    std::string device = "cpu";

    void add_to(po::options_description& options);
    // After parsing: fills config and validates it, and resolves sp_size against the number of
    // ranks (ConfigError).
    void finish(int ranks);
};

// Names of the input tensors: --q-dataset --k-dataset --v-dataset --do-dataset.
struct DatasetNames {
    std::string q = "q", k = "k", v = "v", dout = "do";
    void add_to(po::options_description& options);
};

// Adds --help and --config FILE, which every subcommand has.
void add_common_options(po::options_description& options);

// Parses `args` (the words after the subcommand) for `command` into the variables bound in
// `options` (which has the common options). Returns false when --help was given (nothing
// else is checked then); throws ConfigError.
bool parse_options(const std::string& command, const std::vector<std::string>& args, po::options_description& options);

// The help text of a subcommand: usage line, description, options.
std::string help_text(const std::string& usage, const std::string& description, const po::options_description& options);

// Throws ConfigError("<name> must be at least <least>, got <value>") when value < least.
void require_at_least(const std::string& name, std::int64_t value, std::int64_t least);

}  // namespace racesp::cli
