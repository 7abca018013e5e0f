#include "http_queries.hpp"

#include "barrel_p2p/metrics.hpp"
#include "barrel_p2p/queries.hpp"

#include <stdexcept>

namespace barrel_p2p::detail::http_surface {

namespace {

// The default wait of POST /query when the body names none; the longest is
// the node's queries_config::max_timeout.
constexpr std::uint64_t default_timeout_ms = 2'000;

// The body's fields as query options; nullopt with the reason in `why`.
std::optional<query_options> options_of(const json& body, std::string& why) {
  query_options o;
  o.timeout = std::chrono::milliseconds(default_timeout_ms);
  if (const auto n = body.find("nodes"); n != body.end()) {
    if (!n->is_array()) {
      why = "\"nodes\" is an array of node ids";
      return std::nullopt;
    }
    for (const auto& id : *n) {
      if (!id.is_string()) {
        why = "\"nodes\" is an array of node ids";
        return std::nullopt;
      }
      o.nodes.push_back(id.get<std::string>());
    }
  }
  if (const auto t = body.find("tags"); t != body.end()) {
    if (!t->is_object()) {
      why = "\"tags\" is an object of strings";
      return std::nullopt;
    }
    for (const auto& [k, v] : t->items()) {
      if (!v.is_string()) {
        why = "\"tags\" is an object of strings";
        return std::nullopt;
      }
      o.tags.emplace(k, v.get<std::string>());
    }
  }
  if (const auto t = body.find("timeout_ms"); t != body.end()) {
    if (!t->is_number_unsigned() || t->get<std::uint64_t>() == 0 || t->get<std::uint64_t>() > 86'400'000) {
      why = "\"timeout_ms\" is a positive integer";
      return std::nullopt;
    }
    o.timeout = std::chrono::milliseconds(t->get<std::uint64_t>());
  }
  if (const auto m = body.find("max_answers"); m != body.end()) {
    if (!m->is_number_unsigned()) {
      why = "\"max_answers\" is a non-negative integer";
      return std::nullopt;
    }
    o.max_answers = m->get<std::size_t>();
  }
  return o;
}

task<response> ask(std::shared_ptr<queries> q, std::string name, json payload, query_options options, unsigned version) {
  json answers = json::array();
  std::exception_ptr failed;
  try {
    auto stream = co_await q->ask(name, std::move(payload), std::move(options));
    while (auto a = co_await stream.next()) {
      answers.push_back(json{{"node", a->node},
                             {"payload", std::move(a->payload)},
                             {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(a->after).count()}});
    }
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) {
    try {
      std::rethrow_exception(failed);
    } catch (const std::invalid_argument& e) {
      co_return error_response(http::status::bad_request, "bad_query", e.what(), version);
    } catch (const std::length_error& e) {
      co_return error_response(http::status::too_many_requests, "too_many_queries", e.what(), version);
    } catch (const std::exception& e) {
      co_return error_response(http::status::service_unavailable, "unavailable", e.what(), version);
    }
  }
  co_return json_response(http::status::ok, json{{"query", std::move(name)}, {"answers", std::move(answers)}}, version);
}

}  // namespace

bool query_routes::owns(std::string_view path) { return path == "/query" || path.starts_with("/query/"); }

task<response> query_routes::handle(const request& req, std::string_view path) {
  const auto version = req.version();
  if (!queries_)
    return ready(error_response(http::status::not_found, "not_served", "this node does not serve queries over HTTP",
                                version));
  auto raw = path.substr(std::string_view("/query").size());
  if (!raw.empty()) raw.remove_prefix(1);
  if (!raw.empty() && raw.back() == '/') raw.remove_suffix(1);
  if (raw.empty() || raw.find('/') != std::string_view::npos)
    return ready(error_response(http::status::not_found, "not_found", "queries are asked at /query/{name}", version));
  if (req.method() != http::verb::post) return ready(method_not_allowed("POST", version));
  auto name = percent_decode(raw);
  if (!name) return ready(error_response(http::status::bad_request, "bad_target", "bad percent-encoding", version));
  json body = json::object();
  if (!req.body().empty()) {
    std::string why;
    auto v = parse_value(req.body(), why);
    if (!v) return ready(error_response(http::status::bad_request, "bad_json", why, version));
    if (!v->is_object())
      return ready(error_response(http::status::bad_request, "bad_query", "the body is a JSON object", version));
    body = std::move(*v);
  }
  std::string why;
  auto options = options_of(body, why);
  if (!options) return ready(error_response(http::status::bad_request, "bad_query", why, version));
  json payload = body.contains("payload") ? body["payload"] : json(nullptr);
  return ask(queries_, std::move(*name), std::move(payload), std::move(*options), version);
}

void query_routes::write_metrics(prometheus_writer& w, const std::string& node_id) const {
  if (!queries_) return;
  using K = prometheus_writer::kind;
  const auto c = queries_->counters();
  const prometheus_writer::labels l{{"node", node_id}};
  w.singles(l, {
      {"barrel_p2p_queries_pending", K::gauge, "Queries this node is collecting answers for.", queries_->pending()},
      {"barrel_p2p_queries_asked_total", K::counter, "Queries this node asked.", c.asked},
      {"barrel_p2p_queries_answers_received_total", K::counter, "Answers delivered to this node's queries.", c.answers_received},
      {"barrel_p2p_queries_answers_dropped_total", K::counter, "Answers dropped: repeated by a node, late or for no query here (past its timeout or max_answers), or to another question.",
       c.answers_duplicate + c.answers_late + c.answers_foreign},
      {"barrel_p2p_queries_requests_received_total", K::counter, "Query requests delivered to this node, its own included.", c.requests_received},
      {"barrel_p2p_queries_requests_dropped_total", K::counter, "Requests this node had a handler for but did not run: expired, or too many handlers running.",
       c.requests_expired + c.requests_busy},
      {"barrel_p2p_queries_handled_total", K::counter, "Query handler runs.", c.handled},
      {"barrel_p2p_queries_handler_errors_total", K::counter, "Query handlers that threw.", c.handler_errors},
      {"barrel_p2p_queries_answers_sent_total", K::counter, "Answers this node sent.", c.answers_sent},
      {"barrel_p2p_queries_answers_unsent_total", K::counter, "Answers not sent: too large, past the deadline, or the asker unreachable.", c.answers_unsent},
      {"barrel_p2p_queries_bad_messages_total", K::counter, "Malformed query requests or answers from peers.", c.bad_messages},
  });
}

}  // namespace barrel_p2p::detail::http_surface
