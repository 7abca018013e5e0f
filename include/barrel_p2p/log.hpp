// Log lines: one format for every layer, and the default sink.
//
// Every line the library writes reads "<node id> <component>: <message>",
// for example "n0 tcp: nothing heard from n2 (10.0.0.2:7000) for 3000 ms:
// closing" or "n0 map sessions: dropped 3 invalid recovered entries". The
// components: tcp, membership, broadcast, replica and replica <name>, clock,
// map <name>, elections, registry, placement, queries, http (and daemon,
// for the daemon's own lines). Each layer writes through a `logger`.
// A sink receives whole lines without a newline; the default one adds a
// UTC timestamp and writes them to standard error.
#pragma once

#include <exception>
#include <functional>
#include <string>
#include <string_view>

namespace barrel_p2p {

/// Receives one line at a time, without a trailing newline. Called on the
/// executor of the layer that logs (the node's strand), or on the TCP
/// transport's executor; a sink shared by several nodes of one process on
/// several threads must be thread-safe (the default one is).
using log_sink = std::function<void(const std::string& line)>;

/// "<node_id> <component>: <message>".
[[nodiscard]] std::string log_line(std::string_view node_id, std::string_view component, std::string_view message);

/// The default sink: standard error, each line after an ISO 8601 UTC
/// timestamp with milliseconds ("2026-11-30T12:34:56.789Z n0 tcp: ..."),
/// written with one call so that lines from several threads do not mix.
[[nodiscard]] log_sink stderr_log_sink();

/// The timestamp stderr_log_sink() puts before a line, for sinks of one's
/// own: "2026-11-30T12:34:56.789Z".
[[nodiscard]] std::string utc_timestamp();

/// One component's logger: writes "<node id> <component>: <message>" to a
/// sink. Every layer logs through one. It never throws: a sink that throws
/// loses that line, not the caller's work. With an empty sink it is silent.
/// Called where its layer runs; the sink's own thread rule applies.
class logger {
 public:
  logger() = default;
  logger(log_sink sink, std::string node_id, std::string component)
      : sink_(std::move(sink)), node_id_(std::move(node_id)), component_(std::move(component)) {}

  void operator()(std::string_view message) const noexcept;
  /// False when lines go nowhere (to skip building an expensive one).
  explicit operator bool() const noexcept { return static_cast<bool>(sink_); }
  /// The same sink and node for a sub-component: "replica" -> "replica kv".
  [[nodiscard]] logger sub(std::string_view name) const;

 private:
  log_sink sink_;
  std::string node_id_;
  std::string component_;
};

/// What an exception says, for a log line: what() of a std::exception,
/// "an exception that is not a std::exception" otherwise; "no exception" for
/// a null pointer; never empty. Never throws. Inside a catch block,
/// exception_text(std::current_exception()).
[[nodiscard]] std::string exception_text(const std::exception_ptr& e) noexcept;

}  // namespace barrel_p2p
