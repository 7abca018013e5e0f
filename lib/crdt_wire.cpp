#include "barrel_p2p/crdt_wire.hpp"

namespace barrel_p2p::crdt_wire {

json encode_hlc(const hlc_timestamp& ts) { return json::array({ts.wall_ms, ts.logical}); }

json encode_entry(const entry& e) {
  if (const auto* v = std::get_if<value_entry>(&e))
    return {{"v", v->payload}, {"d", json::array({json::array({v->dot.node, encode_hlc(v->dot.hlc)})})}};
  return {{"t", encode_hlc(std::get<tombstone>(e).hlc)}};
}

void write_entry(cbor_writer& w, const entry& e) {
  const auto hlc = [&](const hlc_timestamp& ts) { w.array(2).uint(ts.wall_ms).uint(ts.logical); };
  if (const auto* v = std::get_if<value_entry>(&e)) {
    w.map(2).text("v").value(v->payload).text("d").array(1).array(2).text(v->dot.node);
    hlc(v->dot.hlc);
  } else {
    w.map(1).text("t");
    hlc(std::get<tombstone>(e).hlc);
  }
}

json encode_map(const ormap& m) {
  json out = json::object();
  for (const auto& [k, e] : m.entries()) out[k] = encode_entry(e);
  return out;
}

std::optional<hlc_timestamp> decode_hlc(const json& j, const hlc_clock& clock) noexcept {
  if (!j.is_array() || j.size() != 2) return std::nullopt;
  const auto& wall = j[0];
  const auto& logical = j[1];
  if (!wall.is_number_unsigned() || !logical.is_number_unsigned()) return std::nullopt;
  const auto l = logical.get<std::uint64_t>();
  if (l > hlc_timestamp::logical_limit) return std::nullopt;
  const hlc_timestamp ts{wall.get<std::uint64_t>(), static_cast<std::uint32_t>(l)};
  try {
    if (!clock.admissible(ts)) return std::nullopt;
  } catch (...) {  // an injected wall source that throws
    return std::nullopt;
  }
  return ts;
}

namespace {

std::optional<dot> decode_dot(const json& j, const hlc_clock& clock, const limits& lim) {
  if (!j.is_array() || j.size() != 2 || !j[0].is_string()) return std::nullopt;
  const auto& node = j[0].get_ref<const std::string&>();
  if (node.empty() || node.size() > lim.max_node_id_bytes) return std::nullopt;
  auto ts = decode_hlc(j[1], clock);
  if (!ts) return std::nullopt;
  return dot{node, *ts};
}

std::optional<entry> decode_unchecked(const std::string& key, const json& j,
                                      const hlc_clock& clock, const leaf_validator& leaf,
                                      const limits& lim) {
  if (key.size() > lim.max_key_bytes || !j.is_object()) return std::nullopt;
  const auto t = j.find("t");
  const auto v = j.find("v");
  const auto d = j.find("d");
  const bool is_tombstone = t != j.end();
  const bool is_value = v != j.end() && d != j.end();
  if (is_tombstone == is_value || j.size() != (is_value ? 2u : 1u)) return std::nullopt;
  if (is_tombstone) {
    auto ts = decode_hlc(*t, clock);
    if (!ts) return std::nullopt;
    return tombstone{*ts};
  }
  if (!d->is_array() || d->empty() || d->size() > lim.max_dots) return std::nullopt;
  std::optional<dot> greatest;
  for (const auto& dj : *d) {
    auto one = decode_dot(dj, clock, lim);
    if (!one) return std::nullopt;  // one bad dot spoils the whole entry
    if (!greatest || *one > *greatest) greatest = std::move(one);
  }
  if (leaf && !leaf(key, *v)) return std::nullopt;
  return value_entry{*v, std::move(*greatest)};
}

}  // namespace

std::optional<entry> decode_entry(const std::string& key, const json& j,
                                  const hlc_clock& clock, const leaf_validator& leaf,
                                  const limits& lim) noexcept {
  try {
    return decode_unchecked(key, j, clock, leaf, lim);
  } catch (...) {  // a leaf that throws, or allocation failure on a copy
    return std::nullopt;
  }
}

bool valid_entry(const std::string& key, const json& j, const hlc_clock& clock,
                 const leaf_validator& leaf, const limits& lim) noexcept {
  return decode_entry(key, j, clock, leaf, lim).has_value();
}

ormap accept(const json& payload, const hlc_clock& clock, const leaf_validator& leaf,
             std::size_t* rejected, const limits& lim) noexcept {
  ormap out;
  std::size_t dropped = 0;
  try {
    if (payload.is_object()) {
      for (const auto& [key, value] : payload.items()) {
        if (auto e = decode_entry(key, value, clock, leaf, lim))
          out.merge_entry(key, *e);
        else
          ++dropped;
      }
    } else {
      dropped = 1;  // the whole payload is the bad entry
    }
  } catch (...) {
    ++dropped;
  }
  if (rejected) *rejected = dropped;
  return out;
}

ingest_result ingest(ormap& local, const json& incoming, hlc_clock& clock,
                     const leaf_validator& leaf, const limits& lim) {
  ingest_result r;
  r.accepted = accept(incoming, clock, leaf, &r.rejected, lim);
  try {
    r.accepted.absorb_clock(clock);
  } catch (const hlc_offset_error&) {
    // Only if the wall clock stepped back between accept and here: the
    // entries are merged; the clock catches up on the next one.
  }
  r.changed = local.merge(r.accepted);
  return r;
}

}  // namespace barrel_p2p::crdt_wire
