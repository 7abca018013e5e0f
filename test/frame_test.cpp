#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/detail/frame.hpp>
#include <barrel_p2p/tcp_transport.hpp>

#include <doctest/doctest.h>

#include <string>

using namespace barrel_p2p;

namespace {

handshake_nonce counting_nonce(std::uint8_t start = 0) {
  handshake_nonce n{};
  for (std::size_t i = 0; i < n.size(); ++i) n[i] = static_cast<std::uint8_t>(start + i);
  return n;
}

frame_header_bytes raw_header(std::uint32_t length, std::uint8_t ch) {
  return {static_cast<std::uint8_t>(length >> 24), static_cast<std::uint8_t>(length >> 16),
          static_cast<std::uint8_t>(length >> 8), static_cast<std::uint8_t>(length), ch};
}

}  // namespace

TEST_SUITE("transport") {

TEST_CASE("frame header round-trips on every channel") {
  for (auto ch : {channel::control, channel::membership, channel::broadcast, channel::replica}) {
    for (std::size_t body : {std::size_t{1}, std::size_t{200}, std::size_t{65536}, std::size_t{1} << 24}) {
      const auto header = encode_frame_header(ch, body);
      const auto parsed = parse_frame_header(header, std::size_t{1} << 26);
      REQUIRE(parsed);
      CHECK(parsed.header.ch == ch);
      CHECK(parsed.header.body_size == body);
      CHECK(parsed.length == body + 1);
    }
  }
  // Big-endian length of channel byte + body.
  const auto h = encode_frame_header(channel::replica, 0x010203);
  CHECK(h == frame_header_bytes{0x00, 0x01, 0x02, 0x04, 0x03});
}

TEST_CASE("encode_frame is header then body") {
  const std::vector<std::uint8_t> body = {0xa0};  // CBOR {}
  const auto frame = encode_frame(channel::broadcast, body);
  CHECK(frame == std::vector<std::uint8_t>{0, 0, 0, 2, 2, 0xa0});
}

TEST_CASE("header parse rejects zero length, empty body, oversized, unknown channel, truncation") {
  const std::size_t max = 1024;
  CHECK(parse_frame_header(raw_header(0, 1), max).error == frame_error::zero_length);
  CHECK(parse_frame_header(raw_header(1, 1), max).error == frame_error::empty_body);
  // The limit counts the whole frame: 4 length bytes + length.
  CHECK(parse_frame_header(raw_header(1020, 1), max));
  CHECK(parse_frame_header(raw_header(1021, 1), max).error == frame_error::oversized);
  const auto huge = parse_frame_header(raw_header(0xffffffff, 1), max);
  CHECK(huge.error == frame_error::oversized);
  CHECK(huge.length == 0xffffffffu);
  CHECK(parse_frame_header(raw_header(10, 6), max).error == frame_error::unknown_channel);
  CHECK(parse_frame_header(raw_header(10, 255), max).error == frame_error::unknown_channel);
  const std::uint8_t short_bytes[] = {0, 0, 0, 2};
  CHECK(parse_frame_header(short_bytes, max).error == frame_error::truncated);
  CHECK(parse_frame_header({}, max).error == frame_error::truncated);
  CHECK_FALSE(parse_frame_header(raw_header(0, 1), max));
  CHECK(to_string(frame_error::oversized) == "oversized");
}

TEST_CASE("the length alone is judged from its 4 bytes") {
  const std::size_t max = 1024;
  const auto zero = raw_header(0, 0);
  CHECK(parse_frame_length(std::span(zero).first(4), max).error == frame_error::zero_length);
  const auto huge = raw_header(5000, 1);
  CHECK(parse_frame_length(std::span(huge).first(4), max).error == frame_error::oversized);
  const auto fine = raw_header(100, 200);  // the channel is not its business
  const auto parsed = parse_frame_length(std::span(fine).first(4), max);
  CHECK(parsed);
  CHECK(parsed.length == 100);
  CHECK(parse_frame_length(std::span(fine).first(3), max).error == frame_error::truncated);
}

TEST_CASE("hello survives CBOR and parses back") {
  const hello_message hello{protocol_version, {"node-a", {"10.0.0.1", 4000}}, counting_nonce()};
  const auto wire = encode_cbor(make_hello(hello));
  auto decoded = decode_cbor(wire);
  REQUIRE(decoded);
  auto back = parse_hello(*decoded);
  REQUIRE(back);
  CHECK(back->version == protocol_version);
  CHECK(back->self == hello.self);
  CHECK(back->nonce == hello.nonce);
  CHECK(wire.size() < handshake_max_frame_bytes);
}

TEST_CASE("malformed hellos are refused without throwing") {
  const json good = make_hello({1, {"a", {"h", 1}}, counting_nonce()});
  REQUIRE(parse_hello(good));
  auto without = [&](const char* key) {
    json j = good;
    j.erase(key);
    return j;
  };
  auto with = [&](const char* key, json v) {
    json j = good;
    j[key] = std::move(v);
    return j;
  };
  CHECK_FALSE(parse_hello(json()));
  CHECK_FALSE(parse_hello(json::array({1, 2})));
  for (const char* key : {"v", "id", "host", "port", "nonce"}) CHECK_FALSE(parse_hello(without(key)));
  CHECK_FALSE(parse_hello(with("v", -1)));
  CHECK_FALSE(parse_hello(with("v", "1")));
  CHECK_FALSE(parse_hello(with("v", std::uint64_t{1} << 32)));
  CHECK_FALSE(parse_hello(with("id", "")));
  CHECK_FALSE(parse_hello(with("id", std::string(256, 'x'))));
  CHECK_FALSE(parse_hello(with("host", 5)));
  CHECK_FALSE(parse_hello(with("port", 70000)));
  CHECK_FALSE(parse_hello(with("nonce", json::binary(std::vector<std::uint8_t>(31, 1)))));
  CHECK_FALSE(parse_hello(with("nonce", json::binary(std::vector<std::uint8_t>(33, 1)))));
  CHECK_FALSE(parse_hello(with("nonce", std::string(32, 'x'))));
  // Another version parses (the caller decides it is unacceptable).
  auto v2 = parse_hello(with("v", 2));
  REQUIRE(v2);
  CHECK(v2->version == 2);
}

TEST_CASE("an id refusal round-trips through CBOR; anything else is not one") {
  for (const auto why : {id_refusal::why::own_id, id_refusal::why::in_use}) {
    id_refusal r;
    r.reason = why;
    r.holder = "10.0.0.7:7946";
    auto back = decode_cbor(encode_cbor(make_id_refusal(r)));
    REQUIRE(back);
    auto parsed = parse_id_refusal(*back);
    REQUIRE(parsed);
    CHECK(parsed->reason == why);
    CHECK(parsed->holder == "10.0.0.7:7946");
    CHECK_FALSE(parse_hello(*back));
  }
  CHECK_FALSE(parse_id_refusal(json{{"refused", "other"}, {"holder", "h:1"}}));
  CHECK_FALSE(parse_id_refusal(json{{"refused", "in_use"}}));
  CHECK_FALSE(parse_id_refusal(json{{"refused", "in_use"}, {"holder", 7}}));
  CHECK_FALSE(parse_id_refusal(json{{"refused", "in_use"}, {"holder", std::string(301, 'h')}}));
  CHECK_FALSE(parse_id_refusal(make_heartbeat()));
  CHECK_FALSE(parse_id_refusal(json::array()));
}

TEST_CASE("nonces come from the CSPRNG and differ") {
  const auto a = random_nonce();
  const auto b = random_nonce();
  CHECK(a != b);
  CHECK(a != handshake_nonce{});
}

TEST_CASE("the heartbeat is a small control message") {
  const auto body = encode_body(make_heartbeat());
  CHECK(body.size() < 16);
  CHECK(body.tail.empty());
  CHECK(decode_cbor(body.head.bytes()));
}

}  // TEST_SUITE
