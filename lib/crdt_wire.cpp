#include "barrel_p2p/crdt_wire.hpp"

namespace barrel_p2p::crdt_wire {

std::optional<json> encode_items(const ormap& m, const std::vector<sync_item>& items) {
  json out = json::object();
  for (const auto& item : items)
    if (const auto* key = m.key_of(item)) out[*key] = encode_entry(*m.get_entry(*key));
  if (out.empty()) return std::nullopt;
  return out;
}

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

namespace {

// The shape and range of an HLC, before the clock is asked.
std::optional<hlc_timestamp> parse_hlc(const json& j) {
  if (!j.is_array() || j.size() != 2) return std::nullopt;
  const auto& wall = j[0];
  const auto& logical = j[1];
  if (!wall.is_number_unsigned() || !logical.is_number_unsigned()) return std::nullopt;
  const auto l = logical.get<std::uint64_t>();
  if (l > hlc_timestamp::logical_limit) return std::nullopt;
  const hlc_timestamp ts{wall.get<std::uint64_t>(), static_cast<std::uint32_t>(l)};
  if (!ts.valid()) return std::nullopt;
  return ts;
}

bool admissible(const hlc_timestamp& ts, const hlc_clock& clock) noexcept {
  try {
    return clock.admissible(ts);
  } catch (...) {  // an injected wall source that throws
    return false;
  }
}

// Where decoding an entry stopped, when a timestamp was too far ahead.
struct too_far_ahead {
  hlc_timestamp ts;
  std::string writer;  // empty for a tombstone
};

// A timestamp of the entry: well formed, and admissible unless `ahead`
// records it (the entry is then refused for that reason alone).
std::optional<hlc_timestamp> entry_hlc(const json& j, const hlc_clock& clock, std::optional<too_far_ahead>& ahead,
                                       const std::string& writer) {
  auto ts = parse_hlc(j);
  if (!ts) return std::nullopt;
  if (!admissible(*ts, clock)) {
    ahead = too_far_ahead{*ts, writer};
    return std::nullopt;
  }
  return ts;
}

}  // namespace

std::optional<hlc_timestamp> decode_hlc(const json& j, const hlc_clock& clock) noexcept {
  try {
    auto ts = parse_hlc(j);
    if (!ts || !admissible(*ts, clock)) return std::nullopt;
    return ts;
  } catch (...) {
    return std::nullopt;
  }
}

namespace {

std::optional<dot> decode_dot(const json& j, const hlc_clock& clock, const limits& lim,
                              std::optional<too_far_ahead>& ahead) {
  if (!j.is_array() || j.size() != 2 || !j[0].is_string()) return std::nullopt;
  const auto& node = j[0].get_ref<const std::string&>();
  if (node.empty() || node.size() > lim.max_node_id_bytes) return std::nullopt;
  auto ts = entry_hlc(j[1], clock, ahead, node);
  if (!ts) return std::nullopt;
  return dot{node, *ts};
}

// `ahead` is set when the entry was refused only for a timestamp too far ahead.
std::optional<entry> decode_unchecked(const std::string& key, const json& j,
                                      const hlc_clock& clock, const leaf_validator& leaf,
                                      const limits& lim, std::optional<too_far_ahead>& ahead) {
  if (key.size() > lim.max_key_bytes || !j.is_object()) return std::nullopt;
  const auto t = j.find("t");
  const auto v = j.find("v");
  const auto d = j.find("d");
  const bool is_tombstone = t != j.end();
  const bool is_value = v != j.end() && d != j.end();
  if (is_tombstone == is_value || j.size() != (is_value ? 2u : 1u)) return std::nullopt;
  if (is_tombstone) {
    auto ts = entry_hlc(*t, clock, ahead, {});
    if (!ts) return std::nullopt;
    return tombstone{*ts};
  }
  if (!d->is_array() || d->empty() || d->size() > lim.max_dots) return std::nullopt;
  std::optional<dot> greatest;
  for (const auto& dj : *d) {
    auto one = decode_dot(dj, clock, lim, ahead);
    if (!one) return std::nullopt;  // one bad dot spoils the whole entry
    if (!greatest || *one > *greatest) greatest = std::move(one);
  }
  if (leaf && !leaf(key, *v)) {
    ahead.reset();  // the leaf's verdict, not the clock's
    return std::nullopt;
  }
  return value_entry{*v, std::move(*greatest)};
}

std::optional<entry> decode_noexcept(const std::string& key, const json& j, const hlc_clock& clock,
                                     const leaf_validator& leaf, const limits& lim,
                                     std::optional<too_far_ahead>& ahead) noexcept {
  try {
    return decode_unchecked(key, j, clock, leaf, lim, ahead);
  } catch (...) {  // a leaf that throws, or allocation failure on a copy
    return std::nullopt;
  }
}

}  // namespace

std::optional<entry> decode_entry(const std::string& key, const json& j,
                                  const hlc_clock& clock, const leaf_validator& leaf,
                                  const limits& lim) noexcept {
  std::optional<too_far_ahead> ahead;
  return decode_noexcept(key, j, clock, leaf, lim, ahead);
}

bool valid_entry(const std::string& key, const json& j, const hlc_clock& clock,
                 const leaf_validator& leaf, const limits& lim) noexcept {
  return decode_entry(key, j, clock, leaf, lim).has_value();
}

ormap accept(const json& payload, const hlc_clock& clock, const leaf_validator& leaf, rejections& why,
             const limits& lim) noexcept {
  ormap out;
  try {
    if (payload.is_object()) {
      for (const auto& [key, value] : payload.items()) {
        std::optional<too_far_ahead> ahead;
        if (auto e = decode_noexcept(key, value, clock, leaf, lim, ahead)) {
          out.merge_entry(key, *e);
          continue;
        }
        ++why.total;
        if (!ahead) continue;
        ++why.clock_ahead;
        std::uint64_t wall = 0;
        try {
          wall = clock.wall_ms();
        } catch (...) {
        }
        const auto lead = ahead->ts.wall_ms > wall ? ahead->ts.wall_ms - wall : 0;
        if (lead >= why.max_ahead_ms) {
          why.max_ahead_ms = lead;
          if (!ahead->writer.empty()) why.ahead_writer = std::move(ahead->writer);
        }
      }
    } else {
      why.total = 1;  // the whole payload is the bad entry
    }
  } catch (...) {
    ++why.total;
  }
  return out;
}

ormap accept(const json& payload, const hlc_clock& clock, const leaf_validator& leaf,
             std::size_t* rejected, const limits& lim) noexcept {
  rejections why;
  auto out = accept(payload, clock, leaf, why, lim);
  if (rejected) *rejected = why.total;
  return out;
}

ingest_result ingest(ormap& local, const json& incoming, hlc_clock& clock,
                     const leaf_validator& leaf, const limits& lim) {
  ingest_result r;
  r.accepted = accept(incoming, clock, leaf, r.why, lim);
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
