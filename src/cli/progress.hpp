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

// Prints "<label>: running for 1m20s" every `interval` from a background thread until destroyed.
class Heartbeat {
public:
    Heartbeat(bool enabled, std::string label, std::chrono::seconds interval = std::chrono::seconds(10));
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
