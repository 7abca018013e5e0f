// barrel-p2p-timer-probe: how late does a thread that sleeps 1 ms wake up
// on this machine, with or without disk syncs and busy CPUs beside it?
//
// It uses no part of the library. It exists to tell the library's own
// delays (the persist benchmark's probe, docs/reference/benchmarks.md)
// from the machine's: run it alone with --fsync and --spin to load the
// machine the way a persisted map does, or with neither beside another
// program (the benchmark) to see whether that program delays every thread
// on the machine or only its own.
//
//   barrel-p2p-timer-probe [--seconds S] [--fsync] [--spin N] [--trace]
//
//   --fsync   a thread appends 8 KiB to a file in $TMPDIR (or /tmp) and
//             fsyncs it, back to back
//   --spin N  N threads that never sleep (user-space loops)
//   --trace   print each wake-up more than 2 ms late, with its time
#include <unistd.h>
#include <fcntl.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

// Appends and fsyncs until told to stop; returns the number of fsyncs.
std::size_t fsync_loop(const std::filesystem::path& file, const std::atomic<bool>& stop) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::perror("barrel-p2p-timer-probe: open");
    std::exit(2);
  }
  const std::string block(8192, 'x');
  std::size_t syncs = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    if (::write(fd, block.data(), block.size()) < 0 || ::fsync(fd) != 0) {
      std::perror("barrel-p2p-timer-probe: write/fsync");
      break;
    }
    ++syncs;
  }
  ::close(fd);
  std::error_code ignored;
  std::filesystem::remove(file, ignored);
  return syncs;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 5;
  bool fsync = false, trace = false;
  long spinners = 0;
  bool ok = true;
  // A number that is all of its argument, or ok = false.
  const auto number = [&ok](const char* text) {
    char* end = nullptr;
    const double v = std::strtod(text, &end);
    if (end == text || *end != '\0') ok = false;
    return v;
  };
  for (int i = 1; i < argc && ok; ++i) {
    const std::string_view a = argv[i];
    if (a == "--seconds" && i + 1 < argc) seconds = number(argv[++i]);
    else if (a == "--spin" && i + 1 < argc) spinners = static_cast<long>(number(argv[++i]));
    else if (a == "--fsync") fsync = true;
    else if (a == "--trace") trace = true;
    else ok = false;
  }
  if (!ok || !std::isfinite(seconds) || seconds < 0.01 || seconds > 86'400 || spinners < 0 || spinners > 64) {
    std::fprintf(stderr,
                 "usage: barrel-p2p-timer-probe [--seconds S] [--fsync] [--spin N] [--trace]\n"
                 "       0.01 <= S <= 86400, 0 <= N <= 64\n");
    return 2;
  }

  std::atomic<bool> stop{false};
  std::vector<std::thread> load;
  for (long s = 0; s < spinners; ++s)
    load.emplace_back([&stop] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  std::size_t syncs = 0;
  if (fsync) {
    const char* tmp = std::getenv("TMPDIR");
    const auto file = std::filesystem::path(tmp ? tmp : "/tmp") / ("barrel-p2p-timer-probe-" + std::to_string(::getpid()));
    load.emplace_back([&stop, &syncs, file] { syncs = fsync_loop(file, stop); });
  }

  const auto start = clock_type::now();
  const auto end = start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(seconds));
  std::vector<double> late_ms;
  while (clock_type::now() < end) {
    const auto asked = clock_type::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const double late = std::chrono::duration<double, std::milli>(clock_type::now() - asked).count() - 1.0;
    late_ms.push_back(late);
    if (trace && late > 2.0)
      std::printf("late at %.3f s: %.1f ms\n", std::chrono::duration<double>(asked - start).count(), late);
  }
  stop = true;
  for (auto& t : load) t.join();

  if (late_ms.empty()) late_ms.push_back(0.0);  // a run shorter than one sleep
  const auto over = std::count_if(late_ms.begin(), late_ms.end(), [](double l) { return l > 2.0; });
  std::sort(late_ms.begin(), late_ms.end());
  std::printf("1 ms sleeps: %zu, late p50 %.3f ms, p99 %.3f ms, worst %.2f ms, %ld over 2 ms",
              late_ms.size(), late_ms[late_ms.size() / 2], late_ms[late_ms.size() * 99 / 100], late_ms.back(),
              static_cast<long>(over));
  if (fsync) std::printf("; fsyncs beside: %zu (%.0f/s)", syncs, static_cast<double>(syncs) / seconds);
  if (spinners > 0) std::printf("; busy threads beside: %ld", spinners);
  std::printf("\n");
}
