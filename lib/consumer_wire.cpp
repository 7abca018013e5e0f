#include "consumer_wire.hpp"

#include <charconv>

namespace barrel_p2p::detail::consumer_wire {

namespace {
// Peer strings are not checked for UTF-8: sizes are measured without
// throwing on them.
std::size_t dumped_size(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace).size(); }
}  // namespace

bool valid_part(const std::string& s, std::size_t max) noexcept {
  return !s.empty() && s.size() <= max && s.find('\n') == std::string::npos;
}

std::string join_registry_key(const std::string& service, const std::string& node, const std::string& endpoint) {
  return service + '\n' + node + '\n' + endpoint;
}

std::optional<registry_key> split_registry_key(const std::string& key) {
  const auto a = key.find('\n');
  if (a == std::string::npos) return std::nullopt;
  const auto b = key.find('\n', a + 1);
  if (b == std::string::npos) return std::nullopt;
  registry_key k{key.substr(0, a), key.substr(a + 1, b - a - 1), key.substr(b + 1)};
  if (!valid_part(k.service, max_service_bytes) || !valid_part(k.node, max_node_bytes) ||
      !valid_part(k.endpoint, max_endpoint_bytes))
    return std::nullopt;
  return k;
}

bool valid_registration(const json& v) {
  if (!v.is_object() || v.size() != 2) return false;
  const auto m = v.find("m");
  const auto s = v.find("s");
  return m != v.end() && m->is_object() && dumped_size(*m) <= max_metadata_bytes && s != v.end() &&
         s->is_number_unsigned();
}

std::vector<std::pair<std::string, std::uint64_t>> parse_down_notices(const json& d) {
  std::vector<std::pair<std::string, std::uint64_t>> out;
  if (!d.is_array()) return out;
  for (const auto& item : d) {
    if (!item.is_array() || item.size() != 2 || !item[0].is_string() || !item[1].is_number_unsigned()) continue;
    const auto& node = item[0].get_ref<const std::string&>();
    if (!valid_part(node, max_node_bytes)) continue;
    out.emplace_back(node, item[1].get<std::uint64_t>());
  }
  return out;
}

std::optional<std::string> parse_query(const json& q) {
  if (!q.is_string() || !valid_part(q.get_ref<const std::string&>(), max_service_bytes)) return std::nullopt;
  return q.get<std::string>();
}

json tags_announcement(const tags& t) {
  json o = json::object();
  for (const auto& [k, v] : t) o[k] = v;
  json m = json::object();
  m["tags"] = std::move(o);
  return m;
}

bool valid_tags(const tags& t) noexcept {
  if (t.size() > max_tags) return false;
  for (const auto& [k, v] : t)
    if (k.empty() || k.size() > max_tag_key_bytes || v.size() > max_tag_value_bytes) return false;
  try {
    return tags_announcement(t).dump().size() <= max_metadata_bytes;  // the strict dump throws on bad UTF-8
  } catch (...) {
    return false;
  }
}

json member_announcement(double weight, std::uint32_t shards) {
  json m = json::object();
  m["w"] = weight;
  m["n"] = shards;
  return m;
}

std::optional<double> member_weight(const json& metadata, std::uint32_t shards) {
  if (!metadata.is_object()) return std::nullopt;
  const auto w = metadata.find("w");
  const auto n = metadata.find("n");
  if (w == metadata.end() || !w->is_number() || n == metadata.end() || !n->is_number_unsigned() ||
      n->get<std::uint64_t>() != shards)
    return std::nullopt;
  const auto weight = w->get<double>();
  if (!(weight > 0) || weight > 1e6) return std::nullopt;  // NaN fails the first test
  return weight;
}

std::vector<std::pair<std::uint32_t, std::uint64_t>> parse_marks(const json& f, std::uint32_t shards) {
  std::vector<std::pair<std::uint32_t, std::uint64_t>> out;
  if (!f.is_object()) return out;
  for (const auto& [name, mark] : f.items()) {
    if (!mark.is_number_unsigned() || name.empty() || name.size() > 5 || (name.size() > 1 && name[0] == '0'))
      continue;
    std::uint32_t s = 0;
    const auto r = std::from_chars(name.data(), name.data() + name.size(), s);
    if (r.ec != std::errc{} || r.ptr != name.data() + name.size() || s >= shards) continue;
    out.emplace_back(s, mark.get<std::uint64_t>());
  }
  return out;
}

json reminder_value(std::uint64_t at, std::uint64_t every, json payload) {
  json v = json::object();
  v["at"] = at;
  v["e"] = every;
  v["p"] = std::move(payload);
  return v;
}

bool valid_reminder(const std::string& name, const json& v) {
  if (name.empty() || name.size() > max_reminder_name_bytes || !v.is_object() || v.size() != 3) return false;
  const auto at = v.find("at");
  const auto e = v.find("e");
  const auto p = v.find("p");
  return at != v.end() && at->is_number_unsigned() && at->get<std::uint64_t>() < max_reminder_time_ms &&
         e != v.end() && e->is_number_unsigned() && e->get<std::uint64_t>() <= max_reminder_every_ms && p != v.end() &&
         dumped_size(*p) <= max_reminder_payload_bytes;
}

}  // namespace barrel_p2p::detail::consumer_wire
