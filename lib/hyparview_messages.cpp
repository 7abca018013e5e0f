#include "barrel_p2p/detail/hyparview_messages.hpp"

#include "barrel_p2p/cbor.hpp"

#include <string_view>

// Written and read with cbor_writer and cbor_reader, without a json tree in
// between. The bytes are those encode_cbor wrote from the json form before
// (keys in the sorted order of a json object), so peers of either kind read
// each other; the reader takes the keys in any order and skips unknown ones.
namespace barrel_p2p {
namespace {

constexpr std::size_t max_text = 255;  // an id, a host (as descriptor_from_json)
constexpr std::size_t max_key = 32;
constexpr std::size_t max_skip_depth = 8;

void write_descriptor(cbor_writer& w, const peer_descriptor& d) {
  w.map(3).text("host").text(d.address.host).text("id").text(d.id).text("port").uint(d.address.port);
}

void write_list(cbor_writer& w, const std::vector<peer_descriptor>& v) {
  w.array(v.size());
  for (const auto& d : v) write_descriptor(w, d);
}

message_body finish(cbor_writer& w) { return message_body(share_bytes(w.take())); }

// Skips one value of a key this parser does not know.
bool skip(cbor_reader& r) {
  std::size_t items = 4096;
  return r.item(max_skip_depth, items).has_value();
}

std::optional<peer_descriptor> read_descriptor(cbor_reader& r) {
  auto pairs = r.map();
  if (!pairs) return std::nullopt;
  std::optional<std::string_view> id, host;
  std::optional<std::uint64_t> port;
  for (std::uint64_t i = 0; i < *pairs; ++i) {
    auto key = r.text(max_key);
    if (!key) return std::nullopt;
    if (*key == "id") id = r.text(max_text);
    else if (*key == "host") host = r.text(max_text);
    else if (*key == "port") port = r.uint();
    else if (!skip(r)) return std::nullopt;
    if ((*key == "id" && !id) || (*key == "host" && !host) || (*key == "port" && !port)) return std::nullopt;
  }
  if (!id || !host || !port || id->empty() || host->empty() || *port > 65535) return std::nullopt;
  return peer_descriptor{std::string(*id), {std::string(*host), static_cast<std::uint16_t>(*port)}};
}

std::optional<std::vector<peer_descriptor>> read_list(cbor_reader& r, std::size_t max_list) {
  auto n = r.array();
  if (!n || *n > max_list) return std::nullopt;
  std::vector<peer_descriptor> out;
  out.reserve(static_cast<std::size_t>(*n));
  for (std::uint64_t i = 0; i < *n; ++i) {
    auto d = read_descriptor(r);
    if (!d) return std::nullopt;
    out.push_back(std::move(*d));
  }
  return out;
}

// The fields of any membership message; which are required depends on "t".
struct fields {
  std::optional<std::string_view> type, prio;
  std::optional<peer_descriptor> node, origin;
  std::optional<std::uint64_t> ttl;
  std::optional<bool> ok, leave;
  std::optional<std::vector<peer_descriptor>> list;
};

// Reads the top-level map; false with `why` set on a malformed field.
bool read_fields(cbor_reader& r, std::size_t max_list, fields& f, std::string& why) {
  auto pairs = r.map();
  if (!pairs) return why = "not a map", false;
  for (std::uint64_t i = 0; i < *pairs; ++i) {
    auto key = r.text(max_key);
    if (!key) return why = "bad key", false;
    bool ok = true;
    if (*key == "t") ok = (f.type = r.text(max_key)).has_value();
    else if (*key == "n") ok = (f.node = read_descriptor(r)).has_value();
    else if (*key == "o") ok = (f.origin = read_descriptor(r)).has_value();
    else if (*key == "ttl") ok = (f.ttl = r.uint()).has_value();
    else if (*key == "prio") ok = (f.prio = r.text(max_key)).has_value();
    else if (*key == "ok") ok = (f.ok = r.boolean()).has_value();
    else if (*key == "leave") ok = (f.leave = r.boolean()).has_value();
    else if (*key == "l") {
      f.list = read_list(r, max_list);
      if (!f.list) return why = "bad list", false;
    } else ok = skip(r);
    if (!ok) return why = "bad field " + std::string(key->substr(0, 16)), false;
  }
  if (!r.at_end()) return why = "trailing bytes", false;
  return true;
}

std::optional<membership_message> parse(std::span<const std::uint8_t> bytes, std::size_t max_list,
                                        std::string& why) {
  cbor_reader r(bytes);
  fields f;
  if (!read_fields(r, max_list, f, why)) return std::nullopt;
  if (!f.type) return why = "no type", std::nullopt;
  const auto type = *f.type;
  if (type == "join") {
    if (!f.node) return why = "join: bad descriptor", std::nullopt;
    return join_message{std::move(*f.node)};
  }
  if (type == "fwd_join") {
    if (!f.node || !f.ttl) return why = "fwd_join: bad fields", std::nullopt;
    return forward_join_message{std::move(*f.node), *f.ttl};
  }
  if (type == "neighbor") {
    if (!f.node || !f.prio) return why = "neighbor: bad fields", std::nullopt;
    return neighbor_message{std::move(*f.node), *f.prio == "high"};
  }
  if (type == "neighbor_reply") {
    if (!f.ok) return why = "neighbor_reply: bad fields", std::nullopt;
    return neighbor_reply_message{*f.ok};
  }
  if (type == "disconnect") return disconnect_message{f.leave.value_or(false)};
  if (type == "shuffle") {
    if (!f.origin || !f.ttl) return why = "shuffle: bad fields", std::nullopt;
    if (!f.list) return why = "shuffle: bad list", std::nullopt;
    return shuffle_message{std::move(*f.origin), *f.ttl, std::move(*f.list)};
  }
  if (type == "shuffle_reply") {
    if (!f.list) return why = "shuffle_reply: bad list", std::nullopt;
    return shuffle_reply_message{std::move(*f.list)};
  }
  why = "unknown type " + std::string(type.substr(0, 32));
  return std::nullopt;
}

}  // namespace

message_body encode(const join_message& m) {
  cbor_writer w;
  w.map(2).text("n");
  write_descriptor(w, m.node);
  w.text("t").text("join");
  return finish(w);
}

message_body encode(const forward_join_message& m) {
  cbor_writer w;
  w.map(3).text("n");
  write_descriptor(w, m.node);
  w.text("t").text("fwd_join").text("ttl").uint(m.ttl);
  return finish(w);
}

message_body encode(const neighbor_message& m) {
  cbor_writer w;
  w.map(3).text("n");
  write_descriptor(w, m.node);
  w.text("prio").text(m.high_priority ? "high" : "low").text("t").text("neighbor");
  return finish(w);
}

message_body encode(const neighbor_reply_message& m) {
  cbor_writer w;
  w.map(2).text("ok").boolean(m.accepted).text("t").text("neighbor_reply");
  return finish(w);
}

message_body encode(const disconnect_message& m) {
  cbor_writer w;
  w.map(2).text("leave").boolean(m.leaving).text("t").text("disconnect");
  return finish(w);
}

message_body encode(const shuffle_message& m) {
  cbor_writer w;
  w.map(4).text("l");
  write_list(w, m.nodes);
  w.text("o");
  write_descriptor(w, m.origin);
  w.text("t").text("shuffle").text("ttl").uint(m.ttl);
  return finish(w);
}

message_body encode(const shuffle_reply_message& m) {
  cbor_writer w;
  w.map(2).text("l");
  write_list(w, m.nodes);
  w.text("t").text("shuffle_reply");
  return finish(w);
}

std::optional<membership_message> parse_membership_message(std::span<const std::uint8_t> bytes,
                                                           std::size_t max_list, std::string* why) noexcept {
  std::string reason;
  try {
    auto m = parse(bytes, max_list, reason);
    if (!m && why) *why = std::move(reason);
    return m;
  } catch (...) {
    if (why) *why = "unreadable";
    return std::nullopt;
  }
}

}  // namespace barrel_p2p
