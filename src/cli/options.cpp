// Option parsing shared by the subcommands (options.hpp).
#include "options.hpp"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>

#include "racesp/errors.hpp"

namespace racesp::cli {

std::int64_t parse_count(const std::string& text) {
    // digits, an optional fraction, an optional k/M/G/T multiplier
    std::size_t i = 0;
    while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
    std::string number = text.substr(0, i), suffix = text.substr(i);
    double multiplier = 1;
    if (suffix == "k" || suffix == "K") multiplier = 1e3;
    else if (suffix == "m" || suffix == "M") multiplier = 1e6;
    else if (suffix == "g" || suffix == "G") multiplier = 1e9;
    else if (suffix == "t" || suffix == "T") multiplier = 1e12;
    else if (!suffix.empty()) number.clear();
    if (number.empty() || number.front() == '.' || number.back() == '.' ||
        number.find('.') != number.rfind('.'))
        throw ConfigError("'" + text + "' is not a count (examples: 1000000, 1M, 2.5k)");
    double value = std::strtod(number.c_str(), nullptr) * multiplier;
    if (value != std::floor(value) || value > 4e18)
        throw ConfigError("'" + text + "' is not a whole count below 4e18");
    return static_cast<std::int64_t>(value);
}

void validate(boost::any& v, const std::vector<std::string>& values, Count*, int) {
    po::validators::check_first_occurrence(v);
    const std::string& s = po::validators::get_single_string(values);
    try {
        v = boost::any(Count{parse_count(s)});
    } catch (const ConfigError&) {
        throw po::invalid_option_value(s);
    }
}

void validate(boost::any& v, const std::vector<std::string>& values, Seed*, int) {
    po::validators::check_first_occurrence(v);
    const std::string& s = po::validators::get_single_string(values);
    std::uint64_t seed = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), seed);
    if (ec != std::errc() || end != s.data() + s.size()) throw po::invalid_option_value(s);
    v = boost::any(Seed{seed});
}

void RaceOptions::add_to(po::options_description& options) {
    options.add_options()
        ("tables", po::value<int>(&config.tables)->default_value(config.tables)->value_name("L"), "hash tables (>= 1)")
        ("planes", po::value<int>(&config.planes)->default_value(config.planes)->value_name("P"),
         "hyperplanes per table (1..10); 2^P buckets")
        ("beta", po::value<double>(&config.beta)->default_value(config.beta, "1")->value_name("BETA"),
         "soft-hash temperature (> 0)")
        ("eps", po::value<double>(&config.eps)->default_value(config.eps, "1e-6")->value_name("EPS"),
         "bucket normalization: B / (A + eps)")
        ("normalization", po::value<std::string>(&normalization)->default_value(normalization)->value_name("NAME"),
         "kernel | bucket")
        ("causal", po::value<bool>(&config.causal)->default_value(false, "false")->implicit_value(true, "true")
             ->value_name("BOOL"),
         "causal attention: token i sees tokens <= i")
        ("share-planes", po::value<bool>(&config.share_planes)->default_value(false, "false")
             ->implicit_value(true, "true")->value_name("BOOL"),
         "one set of planes for every head")
        ("seed", po::value<Seed>(&seed)->default_value(seed, "0")->value_name("S"), "seed of the random planes")
        ("sp-size", po::value<int>(&sp_size)->default_value(0, "all ranks")->value_name("N"),
         "ranks per sequence-parallel group; the other factor is data-parallel over the batch")
        ("device", po::value<std::string>(&device)->default_value(device)->value_name("DEV"), "cpu | cuda");
}

void RaceOptions::finish(int ranks) {
    config.normalization = parse_normalization(normalization);
    config.seed = seed.value;
    config.validate();
    if (sp_size < 0) throw ConfigError("--sp-size must be at least 1 (or 0 for all ranks), got " + std::to_string(sp_size));
    if (sp_size == 0) sp_size = ranks;
    if (ranks % sp_size != 0)
        throw ConfigError("--sp-size " + std::to_string(sp_size) + " must divide the number of ranks (" +
                          std::to_string(ranks) + ")");
}

void DatasetNames::add_to(po::options_description& options) {
    options.add_options()
        ("q-dataset", po::value<std::string>(&q)->default_value(q)->value_name("NAME"), "dataset of the queries")
        ("k-dataset", po::value<std::string>(&k)->default_value(k)->value_name("NAME"), "dataset of the keys")
        ("v-dataset", po::value<std::string>(&v)->default_value(v)->value_name("NAME"), "dataset of the values")
        ("do-dataset", po::value<std::string>(&dout)->default_value(dout)->value_name("NAME"),
         "dataset of dL/do (--backward)");
}

void add_common_options(po::options_description& options) {
    options.add_options()
        ("help,h", "show this help")
        ("config", po::value<std::string>()->value_name("FILE"),
         "read options from an INI file (key = value, long option names); the command line wins");
}

namespace {

const char* const commands[] = {"attention", "generate", "bench", "prep", "train"};

// Options from the INI file, keeping top-level keys and this command's section, skipping the
// sections of the other commands. Unknown keys are errors: a typo must not pass silently.
void store_config_file(const std::string& command, const std::string& file, const po::options_description& options,
                       po::variables_map& vm) {
    std::ifstream in(file);
    if (!in) throw ConfigError("cannot read config file '" + file + "': " + std::strerror(errno));
    po::parsed_options parsed = po::parse_config_file(in, options, true);
    po::parsed_options kept(&options);
    for (po::option& o : parsed.options) {
        std::string key = o.string_key;
        std::size_t dot = key.find('.');
        if (dot != std::string::npos) {
            std::string section = key.substr(0, dot);
            bool known = false;
            for (const char* c : commands) known = known || section == c;
            if (!known) throw ConfigError("config file '" + file + "': unknown section [" + section + "]");
            if (section != command) continue;
            key = key.substr(dot + 1);
        }
        if (key == "config" || key == "help" || !options.find_nothrow(key, false))
            throw ConfigError("config file '" + file + "': unknown option '" + key + "' for 'racesp " + command + "'");
        o.string_key = key;
        o.unregistered = false;
        kept.options.push_back(o);
    }
    po::store(kept, vm);
}

}  // namespace

bool parse_options(const std::string& command, const std::vector<std::string>& args, po::options_description& options) {
    const std::string hint = " (see 'racesp " + command + " --help')";
    po::options_description all;
    all.add(options);
    all.add_options()("positional", po::value<std::vector<std::string>>(), "");
    po::positional_options_description positional;
    positional.add("positional", -1);
    po::variables_map vm;
    try {
        // Long options only as written: no abbreviations, which would silently change meaning
        // when an option is added later.
        int style = po::command_line_style::unix_style & ~po::command_line_style::allow_guessing;
        po::store(po::command_line_parser(args).options(all).positional(positional).style(style).run(), vm);
        if (vm.count("help")) return false;
        if (vm.count("positional"))
            throw ConfigError("unexpected argument '" + vm["positional"].as<std::vector<std::string>>().front() +
                              "'" + hint);
        if (vm.count("config")) store_config_file(command, vm["config"].as<std::string>(), options, vm);
        po::notify(vm);
    } catch (const po::error& e) {
        throw ConfigError(std::string(e.what()) + hint);
    }
    return true;
}

std::string help_text(const std::string& usage, const std::string& description, const po::options_description& options) {
    std::ostringstream out;
    out << "usage: " << usage << "\n\n" << description << "\n\n" << options;
    return out.str();
}

void require_at_least(const std::string& name, std::int64_t value, std::int64_t least) {
    if (value < least)
        throw ConfigError(name + " must be at least " + std::to_string(least) + ", got " + std::to_string(value));
}

}  // namespace racesp::cli
