#include "http_services.hpp"

#include "consumer_wire.hpp"

#include "barrel_p2p/clock_monitor.hpp"
#include "barrel_p2p/map.hpp"
#include "barrel_p2p/members.hpp"
#include "barrel_p2p/metrics.hpp"
#include "barrel_p2p/placement.hpp"
#include "barrel_p2p/registry.hpp"
#include "barrel_p2p/reminders.hpp"

#include <charconv>
#include <stdexcept>

namespace barrel_p2p::detail::http_surface {

namespace {

constexpr std::size_t default_reminder_limit = 10'000;
constexpr duration max_find_wait{10'000};

// The coroutines below are static functions with their state in
// parameters: GCC 12 miscompiles some member and lambda coroutines
// (docs/how-to/contributing.md).

std::optional<std::uint64_t> parse_u64(std::string_view text) {
  std::uint64_t v = 0;
  auto r = std::from_chars(text.data(), text.data() + text.size(), v);
  if (r.ec != std::errc{} || r.ptr != text.data() + text.size()) return std::nullopt;
  return v;
}

json provider_json(const service_provider& p) {
  return json{{"service", p.service}, {"node", p.node}, {"endpoint", p.endpoint}, {"metadata", p.metadata},
              {"since_ms", p.since_ms}};
}

json providers_json(const std::vector<service_provider>& ps) {
  json out = json::array();
  for (const auto& p : ps) out.push_back(provider_json(p));
  return out;
}

json reminder_json(const reminders& all, const reminder& r) {
  auto owner = all.owner_of(r.name);
  return json{{"name", r.name},         {"at_ms", r.at_ms}, {"every_ms", r.every_ms},
              {"payload", r.payload},   {"shard", all.shard_of(r.name)},
              {"owner", owner ? json(*owner) : json(nullptr)}};
}

json group_summary(const placement& p) {
  return json{{"group", p.group()}, {"shards", p.shards()}, {"members", p.members().size()},
              {"owned", p.owned_shards().size()}};
}

json group_json(const placement& p) {
  json members = json::array();
  for (const auto& m : p.members()) members.push_back(json{{"node", m.node}, {"weight", m.weight}});
  json owners = json::array();
  for (std::uint32_t s = 0; s < p.shards(); ++s) {
    auto o = p.owner(s);
    owners.push_back(o ? json(*o) : json(nullptr));
  }
  json owned = json::array();
  for (auto s : p.owned_shards()) owned.push_back(json{{"shard", s}, {"fence", p.fence(s).value_or(0)}});
  return json{{"group", p.group()}, {"shards", p.shards()}, {"members", std::move(members)},
              {"owners", std::move(owners)}, {"owned", std::move(owned)}};
}

// Response bodies, built in plain functions: GCC 12 miscompiles a json
// literal's initializer list inside a coroutine body.
json service_ok(const std::string& service, const std::string& endpoint) {
  return json{{"service", service}, {"endpoint", endpoint}, {"ok", true}};
}
json providers_body(const std::string& service, const std::vector<service_provider>& found) {
  return json{{"service", service}, {"providers", providers_json(found)}};
}
json scheduled_body(const reminders& r, const std::string& name, std::uint64_t at) {
  auto owner = r.owner_of(name);
  return json{{"name", name}, {"at_ms", at}, {"shard", r.shard_of(name)},
              {"owner", owner ? json(*owner) : json(nullptr)}, {"ok", true}};
}
json name_ok(const std::string& name) { return json{{"name", name}, {"ok", true}}; }

// ---- /services ------------------------------------------------------------------
task<response> register_service(std::shared_ptr<registry> r, std::string service, std::string endpoint, json meta,
                                unsigned version) {
  std::exception_ptr failed;
  try {
    co_await r->register_service(service, endpoint, std::move(meta));
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) co_return write_failure(failed, version);
  co_return json_response(http::status::ok, service_ok(service, endpoint), version);
}

task<response> deregister_service(std::shared_ptr<registry> r, std::string service, std::string endpoint,
                                  unsigned version) {
  std::exception_ptr failed;
  bool removed = false;
  try {
    removed = co_await r->deregister(service, endpoint);
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) co_return write_failure(failed, version);
  if (!removed)
    co_return error_response(http::status::not_found, "not_registered",
                             "this node has no registration of '" + service + "' at '" + endpoint + "'", version);
  co_return json_response(http::status::ok, service_ok(service, endpoint), version);
}

task<response> find_service(std::shared_ptr<registry> r, std::string service, duration wait, unsigned version) {
  std::exception_ptr failed;
  std::vector<service_provider> found;
  try {
    found = co_await r->find(service, wait);
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) co_return write_failure(failed, version);
  co_return json_response(http::status::ok, providers_body(service, found), version);
}

// ---- /reminders -------------------------------------------------------------------
task<response> schedule_reminder(std::shared_ptr<reminders> r, std::string name, std::uint64_t at, json payload,
                                 std::uint64_t every, unsigned version) {
  std::exception_ptr failed;
  try {
    co_await r->schedule(name, at, std::move(payload), every);
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) co_return write_failure(failed, version);
  co_return json_response(http::status::ok, scheduled_body(*r, name, at), version);
}

task<response> cancel_reminder(std::shared_ptr<reminders> r, std::string name, unsigned version) {
  std::exception_ptr failed;
  bool cancelled = false;
  try {
    cancelled = co_await r->cancel(name);
  } catch (...) {
    failed = std::current_exception();
  }
  if (failed) co_return write_failure(failed, version);
  if (!cancelled) co_return error_response(http::status::not_found, "not_found", "no reminder '" + name + "'", version);
  co_return json_response(http::status::ok, name_ok(name), version);
}

// ---- event texts --------------------------------------------------------------------
template <class T, class Format>
task<std::optional<std::string>> next_text(std::shared_ptr<event_stream<T>> stream, Format format) {
  auto ev = co_await stream->next();
  if (!ev) co_return std::nullopt;
  co_return dump(format(*ev));
}

template <class T, class Format>
text_events texts_of(event_stream<T> s, Format format) {
  auto stream = std::make_shared<event_stream<T>>(std::move(s));
  return {[stream, format] { return next_text(stream, format); }, [stream] { return stream->dropped(); }};
}

json service_event_json(const service_event& ev) {
  auto j = provider_json(ev.provider);
  j["event"] = ev.what == service_event::kind::registered ? "registered" : "deregistered";
  return j;
}

json shard_event_json(const shard_event& ev) {
  json j{{"event", ev.what == shard_event::kind::acquired ? "acquired" : "released"}, {"shard", ev.shard}};
  if (ev.what == shard_event::kind::acquired) j["fence"] = ev.fence;
  return j;
}

json fired_json(const fired_reminder& f) {
  return json{{"event", "fired"}, {"name", f.name},       {"payload", f.payload}, {"due_ms", f.due_ms},
              {"every_ms", f.every_ms}, {"shard", f.shard}, {"fence", f.fence},   {"attempt", f.attempt}};
}

json member_json(const member& m) {
  json tags = json::object();
  for (const auto& [k, v] : m.tags) tags[k] = v;
  return json{{"id", m.id}, {"address", m.address}, {"tags", std::move(tags)}, {"since_ms", m.since_ms}};
}

json member_event_json(const member_event& ev) {
  auto j = member_json(ev.who);
  j["event"] = ev.what == member_event::kind::joined ? "joined"
               : ev.what == member_event::kind::updated ? "updated"
                                                        : "left";
  return j;
}

// ?tag=key:value (repeatable, percent-encoded): the tags a member must carry.
std::optional<member_tags> tag_filter(std::string_view query, std::string& why) {
  member_tags having;
  while (!query.empty()) {
    const auto amp = query.find('&');
    const auto pair = query.substr(0, amp);
    query.remove_prefix(amp == std::string_view::npos ? query.size() : amp + 1);
    const auto eq = pair.find('=');
    if (pair.substr(0, eq) != "tag") continue;
    auto value = percent_decode(eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1));
    const auto colon = value ? value->find(':') : std::string::npos;
    if (!value || colon == std::string::npos || colon == 0) {
      why = "tag filters are ?tag=key:value";
      return std::nullopt;
    }
    having[value->substr(0, colon)] = value->substr(colon + 1);
  }
  return having;
}

response not_exposed(std::string_view what, unsigned version) {
  return error_response(http::status::not_found, "not_served",
                        "this node does not serve " + std::string(what) + " over HTTP", version);
}

}  // namespace

void service_routes::expose(std::shared_ptr<placement> p) { groups_[p->group()] = std::move(p); }

bool service_routes::owns(std::string_view path) {
  for (std::string_view root : {"/services", "/shards", "/reminders", "/members"})
    if (path == root || (path.starts_with(root) && path.size() > root.size() && path[root.size()] == '/')) return true;
  return false;
}

task<response> service_routes::handle(const request& req, std::string_view path, std::string_view query) {
  const auto version = req.version();
  const auto method = req.method();
  const auto [root, rest_raw] = first_segment(path.substr(1));
  auto [first_raw, second_raw] = first_segment(rest_raw);
  if (!second_raw.empty() && second_raw.back() == '/') second_raw.remove_suffix(1);
  if (first_raw.empty() && !second_raw.empty())
    return ready(error_response(http::status::bad_request, "bad_target", "empty name in the path", version));
  auto first = percent_decode(first_raw);
  auto second = percent_decode(second_raw);
  if (!first || !second)
    return ready(error_response(http::status::bad_request, "bad_target", "bad percent-encoding", version));

  if (root == "services") {
    if (!registry_) return ready(not_exposed("the service registry", version));
    if (first->empty()) {
      if (method != http::verb::get) return ready(method_not_allowed("GET", version));
      json all = json::array();
      for (const auto& s : registry_->services())
        all.push_back(json{{"service", s}, {"providers", providers_json(registry_->lookup(s))}});
      return ready(json_response(http::status::ok, json{{"services", std::move(all)}}, version));
    }
    if (second->empty()) {
      if (method != http::verb::get) return ready(method_not_allowed("GET", version));
      if (auto f = query_param(query, "find"); f && *f != "0" && *f != "false") {
        auto wait = duration{2'000};
        if (auto t = query_param(query, "timeout_ms")) {
          auto ms = parse_u64(*t);
          if (!ms) return ready(error_response(http::status::bad_request, "bad_timeout", "timeout_ms must be an integer", version));
          wait = std::min(duration{static_cast<duration::rep>(std::min<std::uint64_t>(*ms, 10'000'000))}, max_find_wait);
        }
        return find_service(registry_, *first, wait, version);
      }
      return ready(json_response(http::status::ok, providers_body(*first, registry_->lookup(*first)), version));
    }
    if (method == http::verb::put) {
      json meta = json::object();
      if (!req.body().empty()) {
        std::string why;
        auto v = parse_value(req.body(), why);
        if (!v) return ready(error_response(http::status::bad_request, "bad_json", why, version));
        meta = std::move(*v);
      }
      return register_service(registry_, *first, *second, std::move(meta), version);
    }
    if (method == http::verb::delete_) return deregister_service(registry_, *first, *second, version);
    return ready(method_not_allowed("PUT, DELETE", version));
  }

  if (root == "members") {
    if (!members_) return ready(not_exposed("the member directory", version));
    if (method != http::verb::get) return ready(method_not_allowed("GET", version));
    if (!second->empty())
      return ready(error_response(http::status::not_found, "not_found", "no route for " + std::string(path), version));
    if (first->empty()) {
      std::string why;
      auto having = tag_filter(query, why);
      if (!having) return ready(error_response(http::status::bad_request, "bad_tag", why, version));
      json all = json::array();
      for (const auto& m : members_->list(*having)) all.push_back(member_json(m));
      return ready(json_response(http::status::ok, json{{"members", std::move(all)}}, version));
    }
    auto m = members_->get(*first);
    if (!m) return ready(error_response(http::status::not_found, "not_found", "no live member '" + *first + "'", version));
    return ready(json_response(http::status::ok, member_json(*m), version));
  }

  if (root == "shards") {
    if (method != http::verb::get) return ready(method_not_allowed("GET", version));
    if (first->empty()) {
      json all = json::array();
      for (const auto& [name, p] : groups_) all.push_back(group_summary(*p));
      return ready(json_response(http::status::ok, json{{"groups", std::move(all)}}, version));
    }
    auto it = groups_.find(*first);
    if (it == groups_.end() || !second->empty())
      return ready(error_response(http::status::not_found, "unknown_group",
                                  "no placement group '" + *first + "' is served by this node", version));
    return ready(json_response(http::status::ok, group_json(*it->second), version));
  }

  // /reminders
  if (!reminders_) return ready(not_exposed("reminders", version));
  if (!second->empty())
    return ready(error_response(http::status::not_found, "not_found", "no route for " + std::string(path), version));
  if (first->empty()) {
    if (method != http::verb::get) return ready(method_not_allowed("GET", version));
    std::size_t limit = default_reminder_limit;
    if (auto l = query_param(query, "limit")) {
      auto v = parse_u64(*l);
      if (!v) return ready(error_response(http::status::bad_request, "bad_limit", "limit must be a non-negative integer", version));
      limit = std::min<std::uint64_t>(*v, default_reminder_limit);
    }
    auto all = reminders_->list();
    json out = json::array();
    for (std::size_t i = 0; i < all.size() && i < limit; ++i) out.push_back(reminder_json(*reminders_, all[i]));
    return ready(json_response(http::status::ok,
                               json{{"size", all.size()}, {"truncated", all.size() > limit}, {"reminders", std::move(out)}},
                               version));
  }
  switch (method) {
    case http::verb::get: {
      auto r = reminders_->get(*first);
      if (!r) return ready(error_response(http::status::not_found, "not_found", "no reminder '" + *first + "'", version));
      return ready(json_response(http::status::ok, reminder_json(*reminders_, *r), version));
    }
    case http::verb::put: {
      std::string why;
      auto body = parse_value(req.body(), why);
      if (!body) return ready(error_response(http::status::bad_request, "bad_json", why, version));
      const auto number = [&](const char* key) -> std::optional<std::uint64_t> {
        auto f = body->find(key);
        if (f == body->end() || !f->is_number_unsigned()) return std::nullopt;
        return f->get<std::uint64_t>();
      };
      if (!body->is_object() || (body->contains("at") == body->contains("in_ms")))
        return ready(error_response(http::status::bad_request, "bad_reminder",
                                    "the body is an object with \"at\" (epoch ms) or \"in_ms\", and optionally "
                                    "\"every_ms\" and \"payload\"",
                                    version));
      auto at = body->contains("at") ? number("at") : number("in_ms");
      const auto every = body->contains("every_ms") ? number("every_ms") : std::optional<std::uint64_t>(0);
      if (!at || !every || *at >= reminders::max_time_ms || *every > reminders::max_every_ms)
        return ready(error_response(http::status::bad_request, "bad_reminder",
                                    "at and in_ms are milliseconds below 2^44, every_ms at most a year", version));
      if (body->contains("in_ms")) *at += static_cast<std::uint64_t>(hlc_clock::system_wall_ms());
      if (*at >= reminders::max_time_ms)
        return ready(error_response(http::status::bad_request, "bad_reminder", "the time is out of range", version));
      json payload = body->contains("payload") ? (*body)["payload"] : json(nullptr);
      return schedule_reminder(reminders_, *first, *at, std::move(payload), *every, version);
    }
    case http::verb::delete_:
      return cancel_reminder(reminders_, *first, version);
    default:
      return ready(method_not_allowed("GET, PUT, DELETE", version));
  }
}

std::optional<text_events> service_routes::events(std::string_view path, std::size_t capacity, unsigned version,
                                                  std::optional<response>& refusal) {
  // .../events, with what comes before it.
  constexpr std::string_view suffix = "/events";
  if (!path.ends_with(suffix)) {
    refusal = error_response(http::status::not_found, "not_found", "event streams end in /events", version);
    return std::nullopt;
  }
  const auto [root, rest_raw] = first_segment(path.substr(1, path.size() - 1 - suffix.size()));
  auto rest = percent_decode(rest_raw);
  if (!rest) {
    refusal = error_response(http::status::bad_request, "bad_target", "bad percent-encoding", version);
    return std::nullopt;
  }
  if (root == "services") {
    if (registry_ && !rest->empty() && !consumer_wire::valid_part(*rest, consumer_wire::max_service_bytes))
      refusal = error_response(http::status::bad_request, "bad_target", "service names are 1-200 bytes without a newline",
                               version);
    else if (registry_) return texts_of(registry_->watch(*rest, capacity), service_event_json);
    else refusal = not_exposed("the service registry", version);
  } else if (root == "shards" && !rest->empty()) {
    if (auto it = groups_.find(*rest); it != groups_.end())
      return texts_of(it->second->subscribe(capacity), shard_event_json);
    refusal = error_response(http::status::not_found, "unknown_group",
                             "no placement group '" + *rest + "' is served by this node", version);
  } else if (root == "members" && rest->empty()) {
    if (members_) return texts_of(members_->watch(capacity), member_event_json);
    refusal = not_exposed("the member directory", version);
  } else if (root == "reminders" && rest->empty()) {
    if (reminders_) return texts_of(reminders_->subscribe(capacity), fired_json);
    refusal = not_exposed("reminders", version);
  } else {
    refusal = error_response(http::status::not_found, "not_found", "no event stream at " + std::string(path), version);
  }
  return std::nullopt;
}

json service_routes::status() const {
  json out = json::object();
  if (registry_) out["services"] = registry_->services().size();
  if (!groups_.empty()) {
    json g = json::array();
    for (const auto& [name, p] : groups_) g.push_back(group_summary(*p));
    out["placement"] = std::move(g);
  }
  if (reminders_) out["reminders"] = reminders_->list().size();
  if (members_) out["members"] = members_->list().size();
  return out;
}

}  // namespace barrel_p2p::detail::http_surface

namespace barrel_p2p::detail::http_surface {

void service_routes::write_metrics(prometheus_writer& w, const std::string& node_id) const {
  using K = prometheus_writer::kind;
  const prometheus_writer::labels l{{"node", node_id}};
  auto d = [](std::uint64_t v) { return static_cast<double>(v); };
  if (registry_) {
    const auto c = registry_->counters();
    w.singles(l, {
        {"barrel_p2p_registry_providers", K::gauge, "Service providers this node knows.", d(registry_->providers().size())},
        {"barrel_p2p_registry_rejected_total", K::counter, "Peer registry entries dropped (malformed, or written for another node).", d(c.rejected)},
        {"barrel_p2p_registry_stale_dropped_total", K::counter, "Peer registry entries older than a down notice about their node.", d(c.stale_dropped)},
        {"barrel_p2p_registry_probes_total", K::counter, "Failed neighbours dialled before counting them down.", d(c.probes)},
        {"barrel_p2p_registry_down_notices_sent_total", K::counter, "Down notices gossiped.", d(c.down_notices_sent)},
        {"barrel_p2p_registry_down_notices_received_total", K::counter, "Down notices received.", d(c.down_notices_received)},
        {"barrel_p2p_registry_providers_dropped_total", K::counter, "Registrations dropped because their node went down.", d(c.providers_dropped)},
        {"barrel_p2p_registry_refutations_total", K::counter, "Down notices about this node answered by re-announcing.", d(c.refutations)},
        {"barrel_p2p_registry_queries_sent_total", K::counter, "Overlay queries for services this node knew no provider of.", d(c.queries_sent)},
        {"barrel_p2p_registry_queries_answered_total", K::counter, "Overlay queries this node answered as a provider.", d(c.queries_answered)},
    });
  }
  if (members_)
    w.singles(l, {{"barrel_p2p_members", K::gauge, "Live members in this node's directory.", d(members_->list().size())}});
  if (reminders_) {
    const auto c = reminders_->counters();
    w.singles(l, {
        {"barrel_p2p_reminders_scheduled", K::gauge, "Reminders scheduled in the cluster, as this node holds them.", d(reminders_->list().size())},
        {"barrel_p2p_reminders_fired_total", K::counter, "Reminder deliveries on this node, redeliveries included.", d(c.fired)},
        {"barrel_p2p_reminders_redelivered_total", K::counter, "Deliveries repeated because they were not completed in time.", d(c.redelivered)},
        {"barrel_p2p_reminders_completed_total", K::counter, "Deliveries completed on this node.", d(c.completed)},
    });
  }
  if (!groups_.empty()) {
    const std::vector<std::pair<const char*, const char*>> families{
        {"barrel_p2p_placement_owned_shards", "Shards of the group this node owns."},
        {"barrel_p2p_placement_members", "Members of the group this node knows."},
        {"barrel_p2p_placement_acquired_total", "Shard acquisitions by this node."},
        {"barrel_p2p_placement_released_total", "Shards this node gave up."}};
    for (std::size_t f = 0; f < families.size(); ++f) {
      w.family(families[f].first, f < 2 ? K::gauge : K::counter, families[f].second);
      for (const auto& [name, p] : groups_) {
        const auto c = p->counters();
        const double v = f == 0 ? d(p->owned_shards().size())
                         : f == 1 ? d(p->members().size())
                         : f == 2 ? d(c.acquired)
                                  : d(c.released);
        w.sample({{"node", node_id}, {"group", name}}, v);
      }
    }
  }
}

}  // namespace barrel_p2p::detail::http_surface
