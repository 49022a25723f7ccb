// Token files (racesp prep -> racesp train): HDF5 with a 1-D dataset `tokens` (the training
// stream) and `val_tokens` (held out), uint8 or uint16 token ids, and root attributes
// vocab_size, tokens, val_tokens, val_fraction, sources, source_bytes, racesp_version.
// Reads are per rank and independent (each rank reads only its shard of a window); errors are
// InputError with one line, turned into collective errors by the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace racesp::io {

namespace detail {
class Handle;
}

struct TokenStream {
    std::string name;
    std::int64_t length = 0;
    int bytes = 1;  // 1: uint8, 2: uint16
};

class TokenFile {
public:
    // Errors: missing file, not HDF5, unreadable.
    explicit TokenFile(const std::string& path);
    ~TokenFile();
    TokenFile(const TokenFile&) = delete;
    TokenFile& operator=(const TokenFile&) = delete;

    const std::string& path() const { return path_; }
    bool contains(const std::string& name) const;
    // Errors: missing dataset, not 1-D, not uint8 or uint16.
    TokenStream inspect(const std::string& name) const;
    // The vocab_size attribute; without it 256 (uint8 tokens) or 65536 (uint16).
    std::int64_t vocab(const TokenStream& stream) const;
    // Tokens [begin, begin + count) of `stream` into dst.
    void read(const TokenStream& stream, std::int64_t begin, std::int64_t count, std::int32_t* dst) const;

private:
    std::string path_;
    std::unique_ptr<detail::Handle> file_;
};

// What racesp prep (and generate --task recall) writes. `val_scored`, when not empty, marks
// the tokens of val_tokens whose prediction counts for the validation accuracy (1) or not (0).
struct TokenFileContents {
    std::vector<std::uint8_t> tokens, val_tokens, val_scored;
    std::vector<std::string> sources;
    std::vector<std::int64_t> source_bytes;
    double val_fraction = 0;
};

// Writes a complete token file under a temporary name and renames it to `path` (local call,
// one rank). Errors: InputError.
void write_token_file(const std::string& path, const TokenFileContents& contents);

}  // namespace racesp::io
