#include "query_wire.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/keyed_hash.hpp"
#include "consumer_wire.hpp"

#include <algorithm>

namespace barrel_p2p::detail::query_wire {

bool valid_name(const std::string& name) noexcept {
  if (name.empty() || name.size() > max_name_bytes) return false;
  try {
    (void)json(name).dump();  // the strict dump throws on bytes that are not UTF-8
    return true;
  } catch (...) {
    return false;
  }
}

std::vector<std::uint8_t> encode(const request& r) {
  json m = json::object();
  m["i"] = r.id;
  m["n"] = r.name;
  m["p"] = r.payload;
  m["a"] = to_json(r.asker);
  m["x"] = r.ttl_ms;
  if (!r.nodes.empty()) m["f"] = r.nodes;
  if (!r.tags.empty()) {
    json t = json::object();
    for (const auto& [k, v] : r.tags) t[k] = v;
    m["t"] = std::move(t);
  }
  return encode_cbor(m);
}

std::vector<std::uint8_t> encode(const answer& a) {
  json m = json::object();
  m["i"] = a.id;
  m["q"] = a.digest;
  m["p"] = a.payload;
  return encode_cbor(m);
}

std::uint64_t request_digest(std::span<const std::uint8_t> request_bytes) noexcept {
  static constexpr siphash_key key{0x62617272656c5f70, 0x32702e7175657279};  // fixed: both sides compute it
  return siphash24(key, std::string_view(reinterpret_cast<const char*>(request_bytes.data()), request_bytes.size()));
}

namespace {

const json* field(const json& m, const char* name) {
  const auto it = m.find(name);
  return it == m.end() ? nullptr : &*it;
}

std::optional<request> request_of(json m) {
  if (!m.is_object()) return std::nullopt;
  const auto* i = field(m, "i");
  const auto* n = field(m, "n");
  const auto* p = field(m, "p");
  const auto* a = field(m, "a");
  const auto* x = field(m, "x");
  if (!i || !i->is_number_unsigned() || !n || !n->is_string() || !p || !a || !x || !x->is_number_unsigned())
    return std::nullopt;
  request r;
  r.id = i->get<std::uint64_t>();
  r.name = n->get<std::string>();
  if (!valid_name(r.name)) return std::nullopt;
  auto asker = descriptor_from_json(*a);
  if (!asker) return std::nullopt;
  r.asker = std::move(*asker);
  r.ttl_ms = x->get<std::uint64_t>();
  if (const auto* f = field(m, "f")) {
    if (!f->is_array() || f->empty() || f->size() > max_filter_nodes) return std::nullopt;
    for (const auto& id : *f) {
      if (!id.is_string() || id.get_ref<const std::string&>().empty() || id.get_ref<const std::string&>().size() > 255)
        return std::nullopt;
      r.nodes.push_back(id.get<std::string>());
    }
  }
  if (const auto* t = field(m, "t")) {
    if (!t->is_object() || t->empty() || t->size() > consumer_wire::max_tags) return std::nullopt;
    for (const auto& [k, v] : t->items()) {
      if (!v.is_string()) return std::nullopt;
      r.tags.emplace(k, v.get<std::string>());
    }
    if (!consumer_wire::valid_tags(r.tags)) return std::nullopt;
  }
  r.payload = std::move(m["p"]);
  return r;
}

}  // namespace

std::optional<request> parse_request(std::span<const std::uint8_t> bytes) noexcept {
  try {
    auto m = decode_cbor(bytes);
    if (!m) return std::nullopt;
    return request_of(std::move(*m));
  } catch (...) {  // allocation failure: not a message this node can take
    return std::nullopt;
  }
}

std::optional<answer> parse_answer(std::span<const std::uint8_t> bytes) noexcept {
  try {
    auto m = decode_cbor(bytes);
    if (!m || !m->is_object() || m->size() != 3) return std::nullopt;
    const auto* i = field(*m, "i");
    const auto* q = field(*m, "q");
    const auto* p = field(*m, "p");
    if (!i || !i->is_number_unsigned() || !q || !q->is_number_unsigned() || !p) return std::nullopt;
    return answer{i->get<std::uint64_t>(), q->get<std::uint64_t>(), std::move((*m)["p"])};
  } catch (...) {
    return std::nullopt;
  }
}

bool picks(const request& r, const std::string& self, const std::map<std::string, std::string>& tags) {
  if (!r.nodes.empty() && std::find(r.nodes.begin(), r.nodes.end(), self) == r.nodes.end()) return false;
  for (const auto& [k, v] : r.tags) {
    const auto it = tags.find(k);
    if (it == tags.end() || it->second != v) return false;
  }
  return true;
}

}  // namespace barrel_p2p::detail::query_wire
