#include <barrel_p2p/cbor.hpp>

#include <doctest/doctest.h>

using namespace barrel_p2p;
using nlohmann::json;

TEST_CASE("CBOR round-trips json values") {
  const json v = {{"a", 1}, {"b", {true, nullptr, 2.5, "s"}}, {"c", json::binary({1, 2})},
                  {"neg", -5}, {"big", std::uint64_t{1} << 63}};
  auto back = decode_cbor(encode_cbor(v));
  REQUIRE(back.has_value());
  CHECK(*back == v);
}

TEST_CASE("nesting beyond the depth limit is refused without recursing into it") {
  // A frame of 0x81 bytes is a million nested one-element arrays.
  std::vector<std::uint8_t> deep(1'000'000, 0x81);
  deep.push_back(0xf6);
  cbor_error err;
  CHECK_FALSE(decode_cbor(deep, {}, &err).has_value());
  CHECK(err.reason == "nesting too deep");
  // Just within the limit is fine.
  std::vector<std::uint8_t> ok(64, 0x81);
  ok.push_back(0xf6);
  CHECK(decode_cbor(ok).has_value());
}

TEST_CASE("the item budget bounds what a message can expand into") {
  std::vector<std::uint8_t> many = {0x9a, 0x00, 0x01, 0x86, 0xa0};  // array of 100000
  many.insert(many.end(), 100'000, 0xf6);
  cbor_limits small;
  small.max_items = 1000;
  cbor_error err;
  CHECK_FALSE(decode_cbor(many, small, &err).has_value());
  CHECK(err.reason == "too many items");
  CHECK(decode_cbor(many).has_value());
}

TEST_CASE("truncated input, trailing bytes, huge lengths and tags are errors") {
  const std::vector<std::vector<std::uint8_t>> bad = {
      {},                                        // empty
      {0x82, 0x01},                              // array of 2 with 1 item
      {0x01, 0x02},                              // trailing byte
      {0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 'a'},  // string of 2^64-1 bytes
      {0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},       // array of 2^64-1 items
      {0xc1, 0x01},                              // tag 1
      {0xa1, 0x01, 0x02},                        // map with an integer key
      {0xff},                                    // stray break
  };
  for (std::size_t i = 0; i < bad.size(); ++i) {
    CAPTURE(i);
    cbor_error err;
    CHECK_FALSE(decode_cbor(bad[i], {}, &err).has_value());
    CHECK_FALSE(err.reason.empty());
  }
}
