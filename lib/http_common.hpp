// What the HTTP surface's files share (internal to barrel_p2p_http): the
// Beast types, JSON responses in the error convention of
// docs/reference/http-api.md, target decoding, and a stream of event texts
// for the WebSocket sessions.
#pragma once

#include "barrel_p2p/task.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace barrel_p2p::detail::http_surface {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using json = nlohmann::json;

using request = http::request<http::string_body>;
using response = http::response<http::string_body>;
inline constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

// A value deeper than this would not survive the wire (cbor_limits::max_depth
// is 64 for a whole message, and the protocol wraps a value in ~8 levels).
inline constexpr int max_value_depth = 32;

/// An answer ready now, as the task a route returns (a static coroutine:
/// GCC 12 miscompiles some member and lambda coroutines).
task<response> ready(response r);
/// Never throws on strings that are not UTF-8 (peer strings are not checked).
std::string dump(const json& j);
response json_response(http::status s, const json& body, unsigned version);
/// {"error": code, "detail": detail}
response error_response(http::status s, std::string_view code, const std::string& detail, unsigned version);
response method_not_allowed(std::string_view allow, unsigned version);
std::optional<std::string> percent_decode(std::string_view in);
/// The value of `name` in a query string, undecoded.
std::optional<std::string_view> query_param(std::string_view query, std::string_view name);
/// A request body as a JSON value no deeper than max_value_depth; nullopt
/// with the reason in `why`.
std::optional<json> parse_value(const std::string& body, std::string& why);
/// The answer to a write that threw `e` (a map's, the registry's, the
/// reminders'): 422 rejected (std::invalid_argument), 503 clock_skew with
/// ahead_seconds, 503 map_closed (map_error: callers whose map may refuse a
/// value catch it first), 503 unavailable (std::logic_error: stopping),
/// 507 disk_full, else 500 write_failed. `log`, when given, gets a line for
/// the last two (the disk or something unexpected).
response write_failure(const std::exception_ptr& e, unsigned version,
                       const std::function<void(const std::string&)>& log = {});
/// Splits "a/b/c" at its first slash: {"a", "b/c"} (second empty when none).
std::pair<std::string_view, std::string_view> first_segment(std::string_view path);

/// The events a WebSocket session sends: the next one as text (nullopt when
/// the source is gone), and how many the source has dropped so far.
struct text_events {
  std::function<task<std::optional<std::string>>()> next;
  std::function<std::uint64_t()> dropped;
};

}  // namespace barrel_p2p::detail::http_surface
