#include "barrel_p2p/replica_messages.hpp"

#include "barrel_p2p/crdt_wire.hpp"

namespace barrel_p2p {
namespace {

// The value of a string field, or nullptr.
const std::string* text_field(const json& j, const char* key, std::size_t max_bytes) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return nullptr;
  const auto& s = it->get_ref<const std::string&>();
  return s.size() <= max_bytes ? &s : nullptr;
}

std::optional<std::uint64_t> uint_field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<std::uint64_t>();
}

}  // namespace

shared_bytes encode_delta_payload(const json& delta) { return share_bytes(encode_cbor({{"k", "d"}, {"d", delta}})); }

shared_bytes encode_delta_payload(const std::string& key, const entry& e) {
  cbor_writer w;
  w.map(2).text("k").text("d").text("d").map(1).text(key);
  crdt_wire::write_entry(w, e);
  // Cached by Plumtree for its TTL: shared_bytes copies exactly the bytes
  // written, without the writer's spare capacity.
  return share_bytes(w.take());
}

shared_bytes encode_custom_payload(const json& payload) {
  return share_bytes(encode_cbor({{"k", "c"}, {"p", payload}}));
}

std::optional<replica_payload> parse_replica_payload(std::span<const std::uint8_t> bytes,
                                                     const cbor_limits& limits) noexcept {
  try {
    auto j = decode_cbor(bytes, limits);
    if (!j || !j->is_object() || j->size() != 2) return std::nullopt;
    const auto* kind = text_field(*j, "k", 1);
    if (!kind) return std::nullopt;
    if (*kind == "d" && j->contains("d")) return replica_delta{std::move((*j)["d"])};
    if (*kind == "c" && j->contains("p")) return replica_custom{std::move((*j)["p"])};
    return std::nullopt;
  } catch (...) {
    return std::nullopt;
  }
}

message_body encode(const replica_sync& m) { return encode_sync(m.name, byte_slice(share_bytes(encode_cbor(m.snapshot)))); }

message_body encode(const replica_part& m) {
  return encode_part(m.name, m.id, m.index, m.parts, byte_slice(share_bytes(m.bytes)));
}

message_body encode_sync(const std::string& name, byte_slice snapshot_cbor) {
  cbor_writer w;
  w.map(3).text("t").text("sync").text("n").text(name).text("s");
  return message_body(share_bytes(w.take()), std::move(snapshot_cbor));
}

message_body encode_part(const std::string& name, std::uint64_t id, std::uint64_t index, std::uint64_t parts,
                         byte_slice bytes) {
  cbor_writer w;
  w.map(6).text("t").text("part").text("n").text(name).text("id").uint(id).text("i").uint(index);
  w.text("of").uint(parts).text("b").bytes_head(bytes.size());
  return message_body(share_bytes(w.take()), std::move(bytes));
}

message_body encode(const replica_pull& m) { return encode_body({{"t", "pull"}, {"n", m.name}}); }

message_body encode(const replica_reconcile& m) {
  return encode_body({{"t", "rc"}, {"n", m.name}, {"m", encode_range_sync(m.message)}});
}

std::optional<replica_sync_view> parse_sync_view(std::span<const std::uint8_t> body,
                                                 const cbor_limits& limits) noexcept {
  try {
    cbor_reader r(body);
    if (r.map() != 3) return std::nullopt;
    std::optional<std::string_view> type, name;
    std::optional<std::span<const std::uint8_t>> snapshot;
    // The message is one level and a few items; the snapshot gets the rest
    // of the limits, so whatever this takes, decode_cbor takes whole.
    std::size_t items = limits.max_items > 8 ? limits.max_items - 8 : 0;
    const auto depth = limits.max_depth > 1 ? limits.max_depth - 1 : 0;
    for (int i = 0; i < 3; ++i) {
      const auto key = r.text(1);
      if (!key) return std::nullopt;
      if (*key == "t" && !type) type = r.text(8);
      else if (*key == "n" && !name) name = r.text(replica_max_name_bytes);
      else if (*key == "s" && !snapshot) snapshot = r.item(depth, items);
      else return std::nullopt;
    }
    if (!r.at_end() || type != "sync" || !name || name->empty() || !snapshot) return std::nullopt;
    return replica_sync_view{std::string(*name), static_cast<std::size_t>(snapshot->data() - body.data()),
                             snapshot->size()};
  } catch (...) {  // allocation failure
    return std::nullopt;
  }
}

parsed_replica_message parse_replica_message(std::span<const std::uint8_t> body, const cbor_limits& limits,
                                             const range_sync_config& ranges) noexcept {
  parsed_replica_message out;
  try {
    auto j = decode_cbor(body, limits);
    if (!j) {
      out.error = replica_parse_error::not_cbor;
      return out;
    }
    out.error = replica_parse_error::bad_shape;
    if (!j->is_object()) return out;
    const auto* type = text_field(*j, "t", 8);
    const auto* name = text_field(*j, "n", replica_max_name_bytes);
    if (!type || !name || name->empty()) return out;
    out.name = *name;
    if (*type == "sync" && j->size() == 3 && j->contains("s")) {
      out.message = replica_sync{*name, std::move((*j)["s"])};
    } else if (*type == "pull" && j->size() == 2) {
      out.message = replica_pull{*name};
    } else if (*type == "rc" && j->size() == 3 && j->contains("m")) {
      auto parsed = parse_range_sync((*j)["m"], ranges);
      if (!parsed.message) return out;
      out.message = replica_reconcile{*name, std::move(*parsed.message)};
    } else if (*type == "part" && j->size() == 6) {
      auto id = uint_field(*j, "id");
      auto index = uint_field(*j, "i");
      auto parts = uint_field(*j, "of");
      auto b = j->find("b");
      if (!id || !index || !parts || b == j->end() || !b->is_binary()) return out;
      out.message = replica_part{*name, *id, *index, *parts, std::move(b->get_binary())};
    } else {
      return out;
    }
    out.error = replica_parse_error::none;
  } catch (...) {
    out.message.reset();
    out.error = replica_parse_error::bad_shape;
  }
  return out;
}

}  // namespace barrel_p2p
