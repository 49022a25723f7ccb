// Progress lines on stderr (progress.hpp).
#include "progress.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace racesp::cli {

namespace {

using clock_type = std::chrono::steady_clock;

constexpr double quiet_start_s = 2.0;  // phases shorter than this print nothing
constexpr double log_interval_s = 10.0;
constexpr double tty_interval_s = 0.5;

double seconds_between(clock_type::time_point a, clock_type::time_point b) {
    return std::chrono::duration<double>(b - a).count();
}

void put(const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stderr);
    std::fflush(stderr);
}

}  // namespace

std::string human_count(double n) {
    const char* suffix[] = {"", "K", "M", "G", "T"};
    int i = 0;
    while (std::fabs(n) >= 1000 && i < 4) {
        n /= 1000;
        ++i;
    }
    char buf[32];
    if (i == 0) std::snprintf(buf, sizeof buf, "%.0f", n);
    else std::snprintf(buf, sizeof buf, n < 10 ? "%.2f%s" : n < 100 ? "%.1f%s" : "%.0f%s", n, suffix[i]);
    return buf;
}

std::string human_duration(double s) {
    char buf[32];
    if (!std::isfinite(s)) return "?";
    if (s < 1) std::snprintf(buf, sizeof buf, "%.2fs", s);
    else if (s < 10) std::snprintf(buf, sizeof buf, "%.1fs", s);
    else if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
    else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
    else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, int(s) % 3600 / 60);
    return buf;
}

std::string human_bytes(double bytes) {
    const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (bytes >= 1024 && i < 4) {
        bytes /= 1024;
        ++i;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, i == 0 ? "%.0f %s" : "%.2f %s", bytes, unit[i]);
    return buf;
}

Progress::Progress(bool enabled, std::string label)
    : enabled_(enabled), tty_(::isatty(2) == 1), label_(std::move(label)), start_(clock_type::now()), last_(start_) {}

Progress::~Progress() {
    if (enabled_ && tty_ && printed_) put("\n");
}

void Progress::update(std::int64_t done, std::int64_t total) {
    if (!enabled_) return;
    auto now = clock_type::now();
    double elapsed = seconds_between(start_, now);
    bool finished = done >= total;
    if (elapsed < quiet_start_s) return;
    if (!finished && seconds_between(last_, now) < (tty_ ? tty_interval_s : log_interval_s) && printed_) return;
    last_ = now;
    const double done_d = static_cast<double>(done), total_d = static_cast<double>(total);
    double rate = done_d / std::max(elapsed, 1e-9);
    double eta = rate > 0 ? (total_d - done_d) / rate : NAN;
    char pct[16];
    std::snprintf(pct, sizeof pct, "%.0f%%", total > 0 ? 100.0 * done_d / total_d : 100.0);
    std::string line = "racesp: " + label_ + ": " + human_count(double(done)) + "/" + human_count(double(total)) +
                       " tokens (" + pct + "), " + human_count(rate) + " tokens/s, " +
                       (finished ? "took " + human_duration(elapsed) : "ETA " + human_duration(eta));
    put(tty_ ? "\r" + line + "\033[K" : line + "\n");
    printed_ = true;
}

Heartbeat::Heartbeat(bool enabled, std::string label, double expected_s, std::int64_t tokens,
                     std::chrono::seconds interval) {
    if (!enabled) return;
    thread_ = std::thread([this, label = std::move(label), expected_s, tokens, interval] {
        auto start = clock_type::now();
        std::unique_lock<std::mutex> lock(mutex_);
        while (!wake_.wait_for(lock, interval, [this] { return stop_; })) {
            double elapsed = seconds_between(start, clock_type::now());
            std::string line = "racesp: " + label + ": running for " + human_duration(elapsed);
            if (expected_s > 0 && elapsed < expected_s) {
                double done = static_cast<double>(tokens) * elapsed / expected_s;
                char pct[16];
                std::snprintf(pct, sizeof pct, "%.0f%%", 100.0 * elapsed / expected_s);
                line = "racesp: " + label + ": ~" + human_count(done) + "/" + human_count(double(tokens)) +
                       " tokens (~" + pct + ", estimated), ~" + human_count(double(tokens) / expected_s) +
                       " tokens/s, ETA ~" + human_duration(expected_s - elapsed);
            } else if (expected_s > 0) {
                line += ", longer than the estimated " + human_duration(expected_s);
            }
            put(line + "\n");
        }
    });
}

Heartbeat::~Heartbeat() {
    if (!thread_.joinable()) return;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
}

}  // namespace racesp::cli
