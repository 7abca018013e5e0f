#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/crdt_wire.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <random>

using namespace barrel_p2p;
namespace wire = barrel_p2p::crdt_wire;

namespace {
constexpr std::uint64_t now_ms = 1'700'000'000'000;
hlc_clock fixed_clock() {
  return hlc_clock([] { return now_ms; });
}
json hlc_json(std::uint64_t wall, std::uint32_t logical = 0) { return json::array({wall, logical}); }
json value_json(json v, const std::string& node, std::uint64_t wall) {
  return {{"v", std::move(v)}, {"d", json::array({json::array({node, hlc_json(wall)})})}};
}
}  // namespace

TEST_CASE("encode/decode round-trips entries and maps") {
  auto clock = fixed_clock();
  ormap m;
  m.add("a", json{{"nested", {1, 2, 3}}}, "n1", {now_ms, 1});
  m.remove("b", {now_ms - 5, 0});
  auto j = wire::encode_map(m);
  auto back = wire::accept(j, clock);
  CHECK(back == m);
  // Through CBOR too, as it travels.
  auto decoded = decode_cbor(encode_cbor(j));
  REQUIRE(decoded.has_value());
  CHECK(wire::accept(*decoded, clock) == m);
}

TEST_CASE("valid_entry accepts the documented shapes") {
  auto clock = fixed_clock();
  CHECK(wire::valid_entry("k", value_json(1, "n1", now_ms), clock));
  CHECK(wire::valid_entry("k", json{{"t", hlc_json(now_ms)}}, clock));
  CHECK(wire::valid_entry("k", value_json(nullptr, "n1", now_ms), clock));  // null is a value
}

TEST_CASE("invalid wrappers are rejected, never thrown") {
  auto clock = fixed_clock();
  const std::vector<json> bad = {
      nullptr, 1, "str", json::array(), json::object(),
      json{{"t", "yesterday"}},
      json{{"t", hlc_json(now_ms)}, {"v", 1}},                      // both shapes
      json{{"v", 1}},                                                 // no dots
      json{{"v", 1}, {"d", json::array()}},                           // empty dot set
      json{{"v", 1}, {"d", "n1"}},                                    // dots not a list
      json{{"v", 1}, {"d", json::array({json::array({"n1"})})}},     // short dot
      json{{"v", 1}, {"d", json::array({json::array({7, hlc_json(now_ms)})})}},  // node not string
      json{{"v", 1}, {"d", json::array({json::array({"", hlc_json(now_ms)})})}}, // empty node
      json{{"t", json::array({-1, 0})}},                              // negative wall
      json{{"t", json::array({1.5, 0})}},                             // float wall
      json{{"t", json::array({now_ms, 0, 0})}},                       // three parts
      json{{"t", json::array({now_ms, std::uint64_t{1} << 40})}},     // logical too big
      json{{"t", json::array({std::uint64_t{18446744073709551615ULL}, 0})}},  // huge number
      json{{"t", hlc_json(now_ms + 60'001)}},                         // beyond forward offset
      value_json(1, std::string(300, 'x'), now_ms),                   // node id too long
      json{{"v", 1}, {"d", json::array({json::array({"n1", hlc_json(now_ms)}), 5})}},  // one bad dot
      json{{"t", hlc_json(now_ms)}, {"extra", 1}},                    // unknown field
  };
  for (std::size_t i = 0; i < bad.size(); ++i) {
    CAPTURE(i);
    CHECK_FALSE(wire::valid_entry("k", bad[i], clock));
  }
  CHECK_FALSE(wire::valid_entry(std::string(2000, 'k'), value_json(1, "n1", now_ms), clock));
}

TEST_CASE("accept keeps the valid entries and drops each bad one alone") {
  auto clock = fixed_clock();
  json payload = {
      {"good", value_json("x", "n1", now_ms)},
      {"bad", json{{"v", 1}}},
      {"gone", json{{"t", hlc_json(now_ms)}}},
      {"future", value_json("y", "n1", now_ms + 3'600'000)},
  };
  std::size_t rejected = 0;
  auto m = wire::accept(payload, clock, {}, &rejected);
  CHECK(rejected == 2);
  CHECK(m.keys() == std::vector<std::string>{"good"});
  CHECK(m.entry_count() == 2);
}

TEST_CASE("accept and ingest take any top-level json") {
  auto clock = fixed_clock();
  ormap local;
  local.add("keep", 1, "me", clock.now());
  const auto before = local;
  std::string deep(200, '[');  // deeper input is cut off by decode_cbor's depth limit
  const std::vector<json> junk = {nullptr, true, 3.14, -7, "s", json::array({1, 2}),
                                  json::binary({1, 2, 3}),
                                  json::parse(deep + std::string(200, ']'))};
  for (const auto& j : junk) {
    std::size_t rejected = 0;
    CHECK(wire::accept(j, clock, {}, &rejected).entry_count() == 0);
    CHECK(rejected == 1);
    auto r = wire::ingest(local, j, clock);
    CHECK(r.changed.empty());
    CHECK(local == before);
  }
}

TEST_CASE("a leaf validator that returns false or throws rejects that entry alone") {
  auto clock = fixed_clock();
  wire::leaf_validator only_ints = [](const std::string& key, const json& v) {
    if (key == "boom") throw std::runtime_error("validator bug");
    return v.is_number_integer();
  };
  json payload = {
      {"int", value_json(5, "n1", now_ms)},
      {"str", value_json("5", "n1", now_ms)},
      {"boom", value_json(5, "n1", now_ms)},
      {"tomb", json{{"t", hlc_json(now_ms)}}},  // tombstones bypass the leaf
  };
  std::size_t rejected = 0;
  auto m = wire::accept(payload, clock, only_ints, &rejected);
  CHECK(rejected == 2);
  CHECK(m.keys() == std::vector<std::string>{"int"});
  CHECK(m.get_entry("tomb") != nullptr);
}

TEST_CASE("ingest merges, reports changed keys, and only accepted entries advance the clock") {
  std::uint64_t wall = now_ms;
  hlc_clock clock([&wall] { return wall; });
  ormap local;
  local.add("same", "v", "n1", {now_ms - 10, 0});
  json incoming = {
      {"same", value_json("v", "n1", now_ms - 10)},            // already have it
      {"new", value_json("fresh", "n2", now_ms + 20'000)},     // ahead, admissible
      {"far", value_json("nope", "n3", now_ms + 120'000)},     // beyond offset
  };
  auto r = wire::ingest(local, incoming, clock);
  CHECK(r.why.total == 1);
  CHECK(r.changed == std::vector<std::string>{"new"});
  CHECK(r.accepted == 2);
  CHECK(local.get("new") == json("fresh"));
  CHECK_FALSE(local.get("far").has_value());
  const auto t = clock.now();
  CHECK(t > hlc_timestamp{now_ms + 20'000, 0});
  CHECK(t.wall_ms < now_ms + 120'000);
}

TEST_CASE("ingest says which changes removed a live value, as json and as CBOR") {
  const auto make_local = [] {
    ormap local;
    local.add("live", "v", "n1", {now_ms - 10, 0});
    local.remove("dead", {now_ms - 10, 0});
    return local;
  };
  const json t = {{"t", hlc_json(now_ms - 5)}};
  const json incoming = {{"dead", t}, {"live", t}, {"never", t}, {"put", value_json(1, "n2", now_ms - 5)}};
  auto clock = fixed_clock();
  auto a = make_local();
  const auto r = wire::ingest(a, incoming, clock);
  REQUIRE(r.changed.size() == 4);  // every entry is newer than what the map held
  REQUIRE(r.removed_values.size() == 1);
  CHECK(r.changed[r.removed_values[0]] == "live");
  auto b = make_local();
  const auto c = wire::ingest_cbor(b, encode_cbor(incoming), clock);
  REQUIRE(c);
  REQUIRE(c->removed_values.size() == 1);
  CHECK(c->changed[c->removed_values[0]] == "live");
  CHECK(a == b);
  CHECK(a.live_size() == 1);
}

TEST_CASE("ingest of a dot set keeps its greatest dot") {
  auto clock = fixed_clock();
  json incoming = {{"k", {{"v", "x"},
                          {"d", json::array({json::array({"a", hlc_json(now_ms - 5)}),
                                             json::array({"c", hlc_json(now_ms - 1)}),
                                             json::array({"b", hlc_json(now_ms - 3)})})}}}};
  ormap local;
  wire::ingest(local, incoming, clock);
  const auto& e = std::get<value_entry>(*local.get_entry("k"));
  CHECK(e.dot.node == "c");
  CHECK(e.dot.hlc == hlc_timestamp{now_ms - 1, 0});
}

TEST_CASE("random garbage never throws and never corrupts the local map (2000 cases)") {
  std::mt19937_64 rng(1234);
  auto clock = fixed_clock();
  ormap local;
  local.add("k", 1, "me", clock.now());
  for (int i = 0; i < 2000; ++i) {
    CAPTURE(i);
    std::vector<std::uint8_t> bytes(rng() % 64);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    if (!bytes.empty()) bytes[0] = static_cast<std::uint8_t>(0xa0 | (rng() % 4));  // a small map
    auto j = decode_cbor(bytes);
    if (!j) continue;
    CHECK_NOTHROW(wire::ingest(local, *j, clock));
    CHECK(local.get("k").has_value());
  }
}

namespace {
// Both ways of ingesting one snapshot, each into its own copy of `base`
// with its own clock: the json tree (decode_cbor, ingest) and the bytes
// (ingest_cbor). Compared by their encoding (a NaN is not equal to itself).
struct two_ways {
  ormap via_json, via_bytes;
  std::optional<wire::ingest_result> json_result, bytes_result;
};
two_ways ingest_both(const ormap& base, const std::vector<std::uint8_t>& bytes, const wire::leaf_validator& leaf = {}) {
  two_ways out{base, base, std::nullopt, std::nullopt};
  auto clock_a = fixed_clock();
  auto clock_b = fixed_clock();
  if (auto decoded = decode_cbor(bytes)) out.json_result = wire::ingest(out.via_json, *decoded, clock_a, leaf);
  out.bytes_result = wire::ingest_cbor(out.via_bytes, bytes, clock_b, leaf);
  return out;
}
std::vector<std::uint8_t> encoded(const ormap& m) { return encode_cbor(wire::encode_map(m)); }
}  // namespace

TEST_CASE("ingest_cbor merges a snapshot from its bytes as ingest merges its json") {
  ormap base;
  base.add("kept", 1, "n1", {now_ms - 50, 0});
  base.add("older", "old", "n1", {now_ms - 50, 0});
  const json snapshot = {
      {"new", value_json("fresh", "n2", now_ms - 10)},
      {"older", value_json("newer", "n2", now_ms - 5)},
      {"kept", value_json("loses", "n2", now_ms - 60)},
      {"gone", json{{"t", hlc_json(now_ms - 1)}}},
      {"ahead", value_json("far", "n3", now_ms + 120'000)},             // beyond the offset
      {"ahead_tomb", json{{"t", hlc_json(now_ms + 120'000)}}},
      {"bad_dot", value_json(1, "", now_ms)},                            // empty node id
      {"extra", json{{"t", hlc_json(now_ms)}, {"x", 1}}},                // a field too many
      {"no_dots", json{{"v", 1}}},
      {"not_object", 7},
      {"empty_dots", json{{"v", 1}, {"d", json::array()}}},
      {"two_dots", json{{"v", 2}, {"d", json::array({json::array({"n1", hlc_json(now_ms - 3)}),
                                                      json::array({"n4", hlc_json(now_ms - 2)})})}}},
      {"rejected", value_json("x", "n1", now_ms - 1)},                   // the leaf says no
      {"nested", value_json(json{{"a", json::array({1, 2.5, nullptr, true})}}, "n1", now_ms - 2)},
      {std::string(2000, 'k'), value_json(1, "n1", now_ms)},            // key too long
  };
  const auto leaf = [](const std::string& key, const json&) { return key != "rejected"; };
  const auto both = ingest_both(base, encode_cbor(snapshot), leaf);
  REQUIRE(both.json_result.has_value());
  REQUIRE(both.bytes_result.has_value());
  CHECK(encoded(both.via_bytes) == encoded(both.via_json));
  CHECK(both.via_bytes.get("older") == json("newer"));
  CHECK(both.via_bytes.get("two_dots") == json(2));
  CHECK_FALSE(both.via_bytes.get("gone").has_value());
  const auto& a = *both.json_result;
  const auto& b = *both.bytes_result;
  CHECK(b.accepted == a.accepted);
  CHECK(b.why.total == a.why.total);
  CHECK(b.why.total == 9);
  CHECK(b.why.clock_ahead == a.why.clock_ahead);
  CHECK(b.why.clock_ahead == 2);
  CHECK(b.why.max_ahead_ms == a.why.max_ahead_ms);
  CHECK(b.why.ahead_writer == a.why.ahead_writer);
  auto changed_a = a.changed, changed_b = b.changed;
  std::sort(changed_a.begin(), changed_a.end());
  std::sort(changed_b.begin(), changed_b.end());
  CHECK(changed_b == changed_a);
}

TEST_CASE("ingest_cbor refuses encodings it does not read, and leaves the map as it was") {
  ormap base;
  base.add("k", 1, "n1", {now_ms - 50, 0});
  const auto valid = encode_cbor(json{{"a", value_json(1, "n1", now_ms)}});
  auto clock = fixed_clock();
  // An indefinite-length map (0xbf ... 0xff) decodes, but is not read here.
  std::vector<std::uint8_t> indefinite = valid;
  indefinite[0] = 0xbf;
  indefinite.push_back(0xff);
  REQUIRE(decode_cbor(indefinite).has_value());
  // A tag, a key that is not text, a value cut short, trailing bytes.
  std::vector<std::uint8_t> tagged = {0xa1, 0x61, 'a', 0xc1, 0x01};
  std::vector<std::uint8_t> int_key = {0xa1, 0x01, 0x01};
  std::vector<std::uint8_t> cut(valid.begin(), valid.end() - 1);
  std::vector<std::uint8_t> trailing = valid;
  trailing.push_back(0x00);
  for (const auto* bytes : {&indefinite, &tagged, &int_key, &cut, &trailing}) {
    ormap local = base;
    CHECK_FALSE(wire::ingest_cbor(local, *bytes, clock).has_value());
    CHECK(local == base);
  }
  // A payload nested deeper than the limits allow: refused, not merged.
  std::vector<std::uint8_t> deep = {0xa1, 0x61, 'a', 0xa2, 0x61, 'v'};
  for (int i = 0; i < 80; ++i) deep.push_back(0x81);
  deep.push_back(0x01);
  const auto dots = encode_cbor(json::array({json::array({"n1", hlc_json(now_ms)})}));
  deep.push_back(0x61);
  deep.push_back('d');
  deep.insert(deep.end(), dots.begin(), dots.end());
  ormap local = base;
  CHECK_FALSE(wire::ingest_cbor(local, deep, clock).has_value());
  CHECK(local == base);
  // The same shape within the limits is read.
  CHECK(wire::ingest_cbor(local, valid, clock).has_value());
  CHECK(local.get("a") == json(1));
}

TEST_CASE("a key named twice is left to the json way, which keeps the last entry") {
  // {"a": older value, "a": newer value} and the reverse order.
  const auto entry = [](std::uint64_t wall, int v) { return encode_cbor(value_json(v, "n1", wall)); };
  for (const bool newer_first : {false, true}) {
    std::vector<std::uint8_t> bytes = {0xa2};
    for (const auto& [wall, v] : newer_first ? std::vector<std::pair<std::uint64_t, int>>{{now_ms - 1, 2}, {now_ms - 9, 1}}
                                             : std::vector<std::pair<std::uint64_t, int>>{{now_ms - 9, 1}, {now_ms - 1, 2}}) {
      bytes.insert(bytes.end(), {0x61, 'a'});
      const auto e = entry(wall, v);
      bytes.insert(bytes.end(), e.begin(), e.end());
    }
    const auto both = ingest_both({}, bytes);
    CHECK_FALSE(both.bytes_result.has_value());
    CHECK(both.via_bytes.entry_count() == 0);
    CHECK(both.via_json.get("a") == json(newer_first ? 1 : 2));
  }
}

TEST_CASE("cbor_reader::item skips exactly one item, and only what decode_cbor takes") {
  const auto one = encode_cbor(json{{"a", json::array({1, -2, 2.5, "x", nullptr, true})}, {"b", json::binary({1, 2})}});
  std::vector<std::uint8_t> two = one;
  two.insert(two.end(), one.begin(), one.end());
  cbor_reader r(two);
  std::size_t items = 100;
  const auto first = r.item(64, items);
  REQUIRE(first.has_value());
  CHECK(first->size() == one.size());
  CHECK(r.item(64, items).has_value());
  CHECK(r.at_end());
  CHECK(items == 100 - 2 * 11);  // two maps, each: itself, 2 keys, an array of 6, a byte string
  for (const std::vector<std::uint8_t>& refused : {std::vector<std::uint8_t>{0xf7}, {0xe0}, {0xc1, 0x01}, {0xa1, 0x01, 0x01},
                                                   {0x9f, 0xff}, {0x5f, 0xff}, {0x62, 'a'}, {0x1c}}) {
    cbor_reader bad(refused);
    std::size_t budget = 100;
    CHECK_FALSE(bad.item(64, budget).has_value());
  }
  // Depth and item limits.
  const std::vector<std::uint8_t> nested = {0x81, 0x81, 0x81, 0x01};
  std::size_t budget = 100;
  CHECK(cbor_reader(nested).item(4, budget).has_value());
  budget = 100;
  CHECK_FALSE(cbor_reader(nested).item(3, budget).has_value());
  budget = 3;
  CHECK_FALSE(cbor_reader(nested).item(64, budget).has_value());
}

TEST_CASE("write_items writes the bytes of what encode_items returns") {
  ormap m;
  m.track_sync_items();
  m.add("a", json{{"x", json::array({1, 2.5})}}, "n1", {now_ms, 1});
  m.remove("b", {now_ms - 5, 0});
  m.add("c", "text", "n2", {now_ms - 3, 0});
  std::vector<sync_item> items;
  m.sync_items()->items(0, m.sync_items()->size(), items);
  const auto bytes = wire::write_items(m, items);
  REQUIRE(bytes.has_value());
  CHECK(decode_cbor(*bytes) == wire::encode_items(m, items));
  // Items no longer current are left out; none current gives nullopt.
  m.add("c", "newer", "n2", {now_ms, 2});
  CHECK(decode_cbor(*wire::write_items(m, items))->size() == 2);
  CHECK_FALSE(wire::write_items(ormap{}, items).has_value());
}
