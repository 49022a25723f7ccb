// Helpers for the racesp train tests (CPU and GPU): a word-like text to train on, and the losses
// of a --metrics file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace racesp::clitest {

// About `bytes` of word-like text, the same every time.
inline void write_text(const std::filesystem::path& path, std::size_t bytes, std::uint32_t seed) {
    const char* words[] = {"race", "attention", "shard", "rank", "token", "state", "bucket", "plane", "hash",
                           "sequence", "model", "train", "the", "of", "and", "a"};
    std::ofstream out(path);
    std::uint32_t x = seed;
    std::size_t written = 0;
    while (written < bytes) {
        x = x * 1664525u + 1013904223u;
        std::string w = words[(x >> 24) % 16];
        w += (x >> 8) % 7 == 0 ? ".\n" : " ";
        out << w;
        written += w.size();
    }
}

// The "loss" of every line of a --metrics file.
inline std::vector<double> losses(const std::filesystem::path& metrics) {
    std::vector<double> out;
    std::ifstream in(metrics);
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line).at("loss").get<double>());
    return out;
}

}  // namespace racesp::clitest
