// Reading the transport's frames from a raw socket, for tests that play a
// peer by hand (plaintext frames: the test-only transport mode, or the old
// protocol an attacker would speak).
#pragma once

#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/detail/frame.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <optional>
#include <vector>

namespace barrel_p2p::testing {

struct raw_frame {
  channel ch;
  json body;
};

/// One frame (header, then body decoded), or nullopt on a socket error or a
/// frame that does not parse.
inline task<std::optional<raw_frame>> read_raw_frame(boost::asio::ip::tcp::socket& s) {
  constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);
  frame_header_bytes header{};
  auto [ec, n] = co_await boost::asio::async_read(s, boost::asio::buffer(header), use_tuple);
  if (ec) co_return std::nullopt;
  const auto parsed = parse_frame_header(header, 1 << 24);
  if (!parsed) co_return std::nullopt;
  std::vector<std::uint8_t> body(parsed.header.body_size);
  auto [ec2, m] = co_await boost::asio::async_read(s, boost::asio::buffer(body), use_tuple);
  if (ec2) co_return std::nullopt;
  auto decoded = decode_cbor(body);
  if (!decoded) co_return std::nullopt;
  co_return raw_frame{parsed.header.ch, std::move(*decoded)};
}

}  // namespace barrel_p2p::testing
