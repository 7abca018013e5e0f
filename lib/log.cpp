#include "barrel_p2p/log.hpp"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <unistd.h>

namespace barrel_p2p {

std::string log_line(std::string_view node_id, std::string_view component, std::string_view message) {
  std::string line;
  line.reserve(node_id.size() + component.size() + message.size() + 3);
  line.append(node_id).append(" ").append(component).append(": ").append(message);
  return line;
}

std::string utc_timestamp() {
  const auto now = std::chrono::system_clock::now();
  const auto t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[40];
  const auto n = std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(stamp + n, sizeof stamp - n, ".%03dZ", static_cast<int>(ms));
  return stamp;
}

log_sink stderr_log_sink() {
  return [](const std::string& line) {
    auto text = utc_timestamp();
    text.append(" ").append(line).append("\n");
    // One write(2) per line: lines from several threads never interleave.
    std::size_t done = 0;
    while (done < text.size()) {
      const auto w = ::write(STDERR_FILENO, text.data() + done, text.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return;  // stderr closed: a log line is not worth an error
      done += static_cast<std::size_t>(w);
    }
  };
}

}  // namespace barrel_p2p
