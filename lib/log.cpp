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

void logger::operator()(std::string_view message) const noexcept {
  if (!sink_) return;
  try {
    sink_(log_line(node_id_, component_, message));
  } catch (...) {
    // A sink that throws (out of memory, a closed pipe turned exception)
    // loses the line; the layer that logged goes on.
  }
}

logger logger::sub(std::string_view name) const {
  std::string component = component_;
  component.append(" ").append(name);
  return logger(sink_, node_id_, std::move(component));
}

std::string exception_text(const std::exception_ptr& e) noexcept {
  if (!e) return "no exception";
  try {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      return ex.what();
    } catch (...) {
      return "an exception that is not a std::exception";
    }
  } catch (...) {
    return "?";  // copying what() ran out of memory; short enough not to allocate
  }
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
