// HyParView's messages (detail/hyparview_messages.hpp): written without a
// json tree, byte for byte what the json form wrote (so older peers read
// them), read in any key order, and refused when malformed. No network.
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/detail/hyparview_messages.hpp>

#include <doctest/doctest.h>

#include <algorithm>

using namespace barrel_p2p;

namespace {

json desc_json(const peer_descriptor& d) { return {{"id", d.id}, {"host", d.address.host}, {"port", d.address.port}}; }

const peer_descriptor a{"node-a", {"10.0.0.1", 7946}};
const peer_descriptor b{"node-b", {"::1", 80}};

std::optional<membership_message> parse(const json& j, std::size_t max_list = 16) {
  return parse_membership_message(encode_cbor(j), max_list);
}

}  // namespace

TEST_SUITE("membership") {

TEST_CASE("membership messages: the bytes are those of the json form, and they read back") {
  const std::vector<std::pair<message_body, json>> cases = {
      {encode(join_message{a}), {{"t", "join"}, {"n", desc_json(a)}}},
      {encode(forward_join_message{a, 6}), {{"t", "fwd_join"}, {"n", desc_json(a)}, {"ttl", 6}}},
      {encode(neighbor_message{a, true}), {{"t", "neighbor"}, {"n", desc_json(a)}, {"prio", "high"}}},
      {encode(neighbor_message{a, false}), {{"t", "neighbor"}, {"n", desc_json(a)}, {"prio", "low"}}},
      {encode(neighbor_reply_message{true}), {{"t", "neighbor_reply"}, {"ok", true}}},
      {encode(disconnect_message{true}), {{"t", "disconnect"}, {"leave", true}}},
      {encode(shuffle_message{a, 300, {a, b}}),
       {{"t", "shuffle"}, {"o", desc_json(a)}, {"ttl", 300}, {"l", json::array({desc_json(a), desc_json(b)})}}},
      {encode(shuffle_reply_message{{b}}), {{"t", "shuffle_reply"}, {"l", json::array({desc_json(b)})}}},
  };
  for (const auto& [body, form] : cases) {
    CAPTURE(form.dump());
    const auto bytes = body.to_bytes();
    CHECK(bytes == encode_cbor(form));
    auto m = parse_membership_message(bytes, 16);
    REQUIRE(m);
    CHECK(std::visit([](const auto& x) { return encode(x); }, *m).to_bytes() == bytes);
  }
  auto s = parse_membership_message(encode(shuffle_message{a, 300, {a, b}}).to_bytes(), 16);
  REQUIRE(s);
  const auto& shuffle = std::get<shuffle_message>(*s);
  CHECK(shuffle.origin == a);
  CHECK(shuffle.ttl == 300);
  CHECK(shuffle.nodes == std::vector<peer_descriptor>{a, b});
  auto n = parse_membership_message(encode(neighbor_message{b, true}).to_bytes(), 16);
  REQUIRE(n);
  CHECK(std::get<neighbor_message>(*n).high_priority);
  CHECK(std::get<neighbor_message>(*n).node == b);
}

TEST_CASE("membership messages: keys in any order, unknown keys skipped, leave may be absent") {
  // A writer that orders keys otherwise (a CBOR map is unordered).
  cbor_writer w;
  w.map(4).text("ttl").uint(3).text("x-extra").value(json{{"nested", json::array({1, 2})}}).text("t").text("fwd_join");
  w.text("n").map(4).text("port").uint(1).text("zzz").boolean(true).text("id").text("c").text("host").text("h");
  auto m = parse_membership_message(w.take(), 16);
  REQUIRE(m);
  CHECK(std::get<forward_join_message>(*m).ttl == 3);
  CHECK(std::get<forward_join_message>(*m).node == peer_descriptor{"c", {"h", 1}});
  auto d = parse(json{{"t", "disconnect"}});
  REQUIRE(d);
  CHECK_FALSE(std::get<disconnect_message>(*d).leaving);
}

TEST_CASE("membership messages: malformed shapes are refused, and told from bytes that are no CBOR at all") {
  const std::vector<json> bad = {
      json::array({1, 2}),                                                    // not a map
      {{"n", desc_json(a)}},                                                  // no type
      {{"t", 7}},                                                             // type not text
      {{"t", "gossip"}},                                                      // unknown type
      {{"t", "join"}},                                                        // no descriptor
      {{"t", "join"}, {"n", {{"id", ""}, {"host", "h"}, {"port", 1}}}},       // empty id
      {{"t", "join"}, {"n", {{"id", "x"}, {"host", "h"}, {"port", 70000}}}},  // port out of range
      {{"t", "join"}, {"n", {{"id", "x"}, {"host", "h"}, {"port", -1}}}},     // negative port
      {{"t", "join"}, {"n", {{"id", std::string(256, 'x')}, {"host", "h"}, {"port", 1}}}},  // id too long
      {{"t", "fwd_join"}, {"n", desc_json(a)}},                               // no ttl
      {{"t", "fwd_join"}, {"n", desc_json(a)}, {"ttl", "3"}},                 // ttl not a number
      {{"t", "neighbor"}, {"n", desc_json(a)}},                               // no priority
      {{"t", "neighbor_reply"}},                                              // no answer
      {{"t", "neighbor_reply"}, {"ok", 1}},                                   // answer not a boolean
      {{"t", "disconnect"}, {"leave", "yes"}},
      {{"t", "shuffle"}, {"o", desc_json(a)}, {"ttl", 1}},                    // no list
      {{"t", "shuffle_reply"}, {"l", desc_json(a)}},                          // list not an array
      {{"t", "shuffle_reply"}, {"l", json::array({desc_json(a), 5})}},        // not a descriptor in it
  };
  for (const auto& j : bad) {
    CAPTURE(j.dump());
    std::string why;
    CHECK_FALSE(parse_membership_message(encode_cbor(j), 16, &why));
    CHECK_FALSE(why.empty());
  }
  // Booleans are the bytes F4 and F5 only: not a float, not a two-byte
  // simple value (which is no valid CBOR at all).
  for (const std::vector<std::uint8_t>& ok_value : {std::vector<std::uint8_t>{0xf9, 0x00, 0x15},
                                                   std::vector<std::uint8_t>{0xf8, 0x15}}) {
    auto bytes = encode_cbor(json{{"ok", true}, {"t", "neighbor_reply"}});  // A2 62 'o' 'k' F5 61 't' ...
    const auto at = std::find(bytes.begin(), bytes.end(), 0xf5) - bytes.begin();
    REQUIRE(at < static_cast<std::ptrdiff_t>(bytes.size()));
    bytes.erase(bytes.begin() + at);
    bytes.insert(bytes.begin() + at, ok_value.begin(), ok_value.end());
    CHECK_FALSE(parse_membership_message(bytes, 16));
  }
  // Longer than the limit.
  json list = json::array();
  for (int i = 0; i < 5; ++i) list.push_back(desc_json(a));
  CHECK(parse(json{{"t", "shuffle_reply"}, {"l", list}}, 5));
  CHECK_FALSE(parse(json{{"t", "shuffle_reply"}, {"l", list}}, 4));
  // Trailing bytes after the map; a truncated map; nothing.
  auto bytes = encode_cbor(json{{"t", "disconnect"}});
  auto trailing = bytes;
  trailing.push_back(0);
  CHECK_FALSE(parse_membership_message(trailing, 16));
  CHECK_FALSE(decode_cbor(trailing));
  auto cut = encode(join_message{a}).to_bytes();
  cut.pop_back();
  CHECK_FALSE(parse_membership_message(cut, 16));
  CHECK_FALSE(decode_cbor(cut));
  CHECK_FALSE(parse_membership_message({}, 16));
  CHECK_FALSE(decode_cbor({}));
}

}  // TEST_SUITE
