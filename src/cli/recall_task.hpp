// The synthetic long-range recall task of `racesp generate --task recall`: sequences in which
// key-value pairs appear at the start and the queries for them at the end, so that with
// several ranks per sequence a query's answer lives on another rank.
#pragma once

#include <cstdint>
#include <string>

#include "token_file.hpp"

namespace racesp::cli {

struct RecallSpec {
    std::int64_t sequences = 1, val_sequences = 1;
    std::int64_t tokens = 256;  // per sequence
    std::int64_t pairs = 4;     // key-value pairs per sequence (1..12)
    std::uint64_t seed = 0;
};

// Throws ConfigError unless the pairs and the queries fit in one sequence.
void check_recall(const RecallSpec& spec);

// The token file: `sequences` sequences of `tokens` bytes in `tokens`, one after another (plus
// one filler token, the target of the last one), `val_sequences` more in `val_tokens`, and
// `val_scored` marking the answers of the queries. A sequence is
//     [K1 v1] [K2 v2] ... [Kk vk] . . . . . . . Kσ1 vσ1 ... Kσk vσk
// with distinct keys ('A'..'L'), values (digits '0'..'9') drawn at random, '.' as filler, and
// the queries in a random order: after each query key the next token is its value. A pair
// [K v] is one token (128 + 10 K + v): the model has no positional encoding, so it could not
// tell which value follows which key if they were separate tokens; one attention lookup by
// content finds the pair.
// Sequences start every `tokens` tokens, so racesp train --seq-len `tokens` reads exactly one.
io::TokenFileContents make_recall(const RecallSpec& spec);

}  // namespace racesp::cli
