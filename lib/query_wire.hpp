// The messages of queries (queries.hpp), encoded and checked in plain
// functions (no I/O) so that the fuzz target test/fuzz/fuzz_consumers.cpp
// reaches the parsers.
//
//   request, broadcast by Plumtree under the tag "barrel_p2p.query":
//     {"i": id, "n": name, "p": payload, "a": asker descriptor,
//      "x": ms left to answer when asked, "f": [node ids]?, "t": {tags}?}
//   Time left, not a wall-clock deadline: clocks may differ by up to the
//   maximum offset (60 s), far more than a query's usual timeout.
//   answer, sent to the asker on the transport's query channel:
//     {"i": id, "q": digest of the request's bytes, "p": payload}
//   The digest ties an answer to the question asked: a member that re-sends
//   a request under a pending query's id with another question gets
//   answers the asker drops.
#pragma once

#include <barrel_p2p/transport.hpp>

#include <map>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace barrel_p2p::detail::query_wire {

inline constexpr const char* broadcast_tag = "barrel_p2p.query";
inline constexpr std::size_t max_name_bytes = 200;
/// Node ids a request may name in its filter.
inline constexpr std::size_t max_filter_nodes = 1024;

struct request {
  std::uint64_t id = 0;
  std::string name;
  json payload;
  peer_descriptor asker;
  std::uint64_t ttl_ms = 0;  ///< ms left to answer, as the asker sent it
  std::vector<std::string> nodes;  ///< empty: any node
  std::map<std::string, std::string> tags;  ///< empty: any tags
};

struct answer {
  std::uint64_t id = 0;
  std::uint64_t digest = 0;  ///< request_digest of the request answered
  json payload;
};

/// A fixed-key SipHash of a request's encoded bytes (as broadcast).
[[nodiscard]] std::uint64_t request_digest(std::span<const std::uint8_t> request_bytes) noexcept;

/// 1 to max_name_bytes bytes of valid UTF-8.
[[nodiscard]] bool valid_name(const std::string& name) noexcept;

[[nodiscard]] std::vector<std::uint8_t> encode(const request& r);
[[nodiscard]] std::vector<std::uint8_t> encode(const answer& a);
/// nullopt on anything but a well-formed message (never throws).
[[nodiscard]] std::optional<request> parse_request(std::span<const std::uint8_t> bytes) noexcept;
[[nodiscard]] std::optional<answer> parse_answer(std::span<const std::uint8_t> bytes) noexcept;

/// Whether a node `self` with `tags` is one the request's filter picks.
[[nodiscard]] bool picks(const request& r, const std::string& self, const std::map<std::string, std::string>& tags);

}  // namespace barrel_p2p::detail::query_wire
