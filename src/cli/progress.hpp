// Progress of long phases on rank 0's stderr: tokens done, tokens/s and ETA for phases that move
// tokens block by block, elapsed time for phases that cannot report (one engine call). Silent
// for the first seconds, so short runs print nothing; one line per update when stderr is a
// file (logs), an updating line when it is a terminal.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace racesp::cli {

class Progress {
public:
    Progress(bool enabled, std::string label);
    ~Progress();  // ends an updating line
    void update(std::int64_t done, std::int64_t total);

private:
    bool enabled_, tty_, printed_ = false;
    std::string label_;
    std::chrono::steady_clock::time_point start_, last_;
};

// For a phase that cannot report its own progress (one engine call): a background thread prints
// every `interval`, until destroyed, either "<label>: running for 1m20s" or, given the phase's
// expected duration for `tokens` tokens, an estimate of tokens done, tokens/s and ETA.
class Heartbeat {
public:
    Heartbeat(bool enabled, std::string label, double expected_s = 0, std::int64_t tokens = 0,
              std::chrono::seconds interval = std::chrono::seconds(10));
    ~Heartbeat();
    Heartbeat(const Heartbeat&) = delete;
    Heartbeat& operator=(const Heartbeat&) = delete;

private:
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stop_ = false;
    std::thread thread_;
};

// "1.23M", "456K", "789" (three significant digits).
std::string human_count(double n);
// "42s", "3m05s", "2h10m".
std::string human_duration(double seconds);
// "1.23 GiB".
std::string human_bytes(double bytes);

}  // namespace racesp::cli
