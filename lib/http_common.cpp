#include "http_common.hpp"

#include "barrel_p2p/clock_monitor.hpp"
#include "barrel_p2p/map.hpp"

#include <charconv>

namespace barrel_p2p::detail::http_surface {

task<response> ready(response r) { co_return r; }


std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

response json_response(http::status s, const json& body, unsigned version) {
  response res{s, version};
  res.set(http::field::content_type, "application/json");
  res.set(http::field::server, "barrel_p2p");
  res.body() = dump(body) + "\n";
  return res;
}

response error_response(http::status s, std::string_view code, const std::string& detail, unsigned version) {
  return json_response(s, json{{"error", code}, {"detail", detail}}, version);
}

response method_not_allowed(std::string_view allow, unsigned version) {
  auto res = error_response(http::status::method_not_allowed, "method_not_allowed",
                            std::string("allowed: ") + std::string(allow), version);
  res.set(http::field::allow, allow);
  return res;
}

std::optional<std::string> percent_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return std::nullopt;
    unsigned v = 0;
    auto r = std::from_chars(in.data() + i + 1, in.data() + i + 3, v, 16);
    if (r.ec != std::errc{} || r.ptr != in.data() + i + 3) return std::nullopt;
    out += static_cast<char>(v);
    i += 2;
  }
  return out;
}

std::optional<std::string_view> query_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? "" : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::optional<json> parse_value(const std::string& body, std::string& why) {
  bool too_deep = false;
  json::parser_callback_t depth_check = [&](int depth, json::parse_event_t, json&) {
    if (depth > max_value_depth) too_deep = true;
    return !too_deep;
  };
  json v = json::parse(body, depth_check, false);
  if (too_deep) {
    why = "the value nests deeper than " + std::to_string(max_value_depth) + " levels";
    return std::nullopt;
  }
  if (v.is_discarded()) {
    why = "the body is not valid JSON";
    return std::nullopt;
  }
  return v;
}

response write_failure(const std::exception_ptr& e, unsigned version,
                       const std::function<void(const std::string&)>& log) {
  const auto logged = [&](const std::exception& ex) {
    if (log) log(std::string("a write failed: ") + ex.what());
  };
  try {
    std::rethrow_exception(e);
  } catch (const std::invalid_argument& ex) {
    return error_response(http::status::unprocessable_entity, "rejected", ex.what(), version);
  } catch (const clock_skew_error& ex) {
    // Not written: retry on another node, or here once the clock is fixed.
    return json_response(http::status::service_unavailable,
                         json{{"error", "clock_skew"}, {"detail", ex.what()}, {"ahead_seconds", to_seconds(ex.ahead_by())}},
                         version);
  } catch (const map_error& ex) {  // a closed map: the node is stopping
    return error_response(http::status::service_unavailable, "map_closed", ex.what(), version);
  } catch (const std::logic_error& ex) {  // the registry stopping
    return error_response(http::status::service_unavailable, "unavailable", ex.what(), version);
  } catch (const std::system_error& ex) {  // the disk refused it: nothing was applied or gossiped
    logged(ex);
    return ex.code() == std::errc::no_space_on_device
               ? error_response(http::status::insufficient_storage, "disk_full", ex.what(), version)
               : error_response(http::status::internal_server_error, "write_failed", ex.what(), version);
  } catch (const std::exception& ex) {
    logged(ex);
    return error_response(http::status::internal_server_error, "write_failed", ex.what(), version);
  }
}

std::pair<std::string_view, std::string_view> first_segment(std::string_view path) {
  const auto slash = path.find('/');
  if (slash == std::string_view::npos) return {path, {}};
  return {path.substr(0, slash), path.substr(slash + 1)};
}

}  // namespace barrel_p2p::detail::http_surface
