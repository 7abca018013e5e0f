#include "barrel_p2p/detail/hyparview_messages.hpp"

namespace barrel_p2p {
namespace {

json descriptors(const std::vector<peer_descriptor>& v) {
  json out = json::array();
  for (const auto& d : v) out.push_back(to_json(d));
  return out;
}

std::optional<peer_descriptor> descriptor_field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  return descriptor_from_json(*it);
}

std::optional<std::uint64_t> uint_field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<std::uint64_t>();
}

std::optional<std::vector<peer_descriptor>> list_field(const json& j, const char* key, std::size_t max_list) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array() || it->size() > max_list) return std::nullopt;
  std::vector<peer_descriptor> out;
  out.reserve(it->size());
  for (const auto& e : *it) {
    auto d = descriptor_from_json(e);
    if (!d) return std::nullopt;
    out.push_back(std::move(*d));
  }
  return out;
}

std::optional<membership_message> parse(const json& j, std::size_t max_list, std::string& why) {
  if (!j.is_object()) return why = "not a map", std::nullopt;
  auto t = j.find("t");
  if (t == j.end() || !t->is_string()) return why = "no type", std::nullopt;
  const auto& type = t->get_ref<const std::string&>();
  if (type == "join") {
    auto n = descriptor_field(j, "n");
    if (!n) return why = "join: bad descriptor", std::nullopt;
    return join_message{std::move(*n)};
  }
  if (type == "fwd_join") {
    auto n = descriptor_field(j, "n");
    auto ttl = uint_field(j, "ttl");
    if (!n || !ttl) return why = "fwd_join: bad fields", std::nullopt;
    return forward_join_message{std::move(*n), *ttl};
  }
  if (type == "neighbor") {
    auto n = descriptor_field(j, "n");
    auto prio = j.find("prio");
    if (!n || prio == j.end() || !prio->is_string()) return why = "neighbor: bad fields", std::nullopt;
    return neighbor_message{std::move(*n), prio->get_ref<const std::string&>() == "high"};
  }
  if (type == "neighbor_reply") {
    auto ok = j.find("ok");
    if (ok == j.end() || !ok->is_boolean()) return why = "neighbor_reply: bad fields", std::nullopt;
    return neighbor_reply_message{ok->get<bool>()};
  }
  if (type == "disconnect") {
    auto leave = j.find("leave");
    if (leave != j.end() && !leave->is_boolean()) return why = "disconnect: bad fields", std::nullopt;
    return disconnect_message{leave != j.end() && leave->get<bool>()};
  }
  if (type == "shuffle") {
    auto origin = descriptor_field(j, "o");
    auto ttl = uint_field(j, "ttl");
    auto list = list_field(j, "l", max_list);
    if (!origin || !ttl) return why = "shuffle: bad fields", std::nullopt;
    if (!list) return why = "shuffle: bad list", std::nullopt;
    return shuffle_message{std::move(*origin), *ttl, std::move(*list)};
  }
  if (type == "shuffle_reply") {
    auto list = list_field(j, "l", max_list);
    if (!list) return why = "shuffle_reply: bad list", std::nullopt;
    return shuffle_reply_message{std::move(*list)};
  }
  why = "unknown type " + type.substr(0, 32);
  return std::nullopt;
}

}  // namespace

message_body encode(const join_message& m) { return encode_body({{"t", "join"}, {"n", to_json(m.node)}}); }

message_body encode(const forward_join_message& m) {
  return encode_body({{"t", "fwd_join"}, {"n", to_json(m.node)}, {"ttl", m.ttl}});
}

message_body encode(const neighbor_message& m) {
  return encode_body({{"t", "neighbor"}, {"n", to_json(m.node)}, {"prio", m.high_priority ? "high" : "low"}});
}

message_body encode(const neighbor_reply_message& m) { return encode_body({{"t", "neighbor_reply"}, {"ok", m.accepted}}); }

message_body encode(const disconnect_message& m) { return encode_body({{"t", "disconnect"}, {"leave", m.leaving}}); }

message_body encode(const shuffle_message& m) {
  return encode_body({{"t", "shuffle"}, {"o", to_json(m.origin)}, {"ttl", m.ttl}, {"l", descriptors(m.nodes)}});
}

message_body encode(const shuffle_reply_message& m) {
  return encode_body({{"t", "shuffle_reply"}, {"l", descriptors(m.nodes)}});
}

std::optional<membership_message> parse_membership_message(const json& j, std::size_t max_list,
                                                           std::string* why) noexcept {
  std::string reason;
  try {
    auto m = parse(j, max_list, reason);
    if (!m && why) *why = std::move(reason);
    return m;
  } catch (...) {
    if (why) *why = "unreadable";
    return std::nullopt;
  }
}

}  // namespace barrel_p2p
