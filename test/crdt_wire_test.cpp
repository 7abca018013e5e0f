#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/crdt_wire.hpp>

#include <doctest/doctest.h>

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
