// What the registry, placement and reminders accept from peers: the shapes
// of their keys, values and custom messages, checked here in plain
// functions (no I/O, no coroutines) so that the fuzz target
// test/fuzz/fuzz_consumers.cpp can reach them.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace barrel_p2p::detail::consumer_wire {

using json = nlohmann::json;

// ---- registry: keys "service\nnode\nendpoint", values {"m": {...}, "s": ms} ----
inline constexpr std::size_t max_service_bytes = 200;
inline constexpr std::size_t max_node_bytes = 255;
inline constexpr std::size_t max_endpoint_bytes = 512;
inline constexpr std::size_t max_metadata_bytes = 4096;

struct registry_key {
  std::string service, node, endpoint;
};
/// 1 to `max` bytes, no newline.
[[nodiscard]] bool valid_part(const std::string& s, std::size_t max) noexcept;
[[nodiscard]] std::string join_registry_key(const std::string& service, const std::string& node,
                                            const std::string& endpoint);
[[nodiscard]] std::optional<registry_key> split_registry_key(const std::string& key);
/// {"m": an object of at most max_metadata_bytes serialized, "s": unsigned}.
[[nodiscard]] bool valid_registration(const json& v);
/// Down notices [[node, packed hlc], ...]: the well-formed items (the
/// caller checks that the clock admits the timestamps).
[[nodiscard]] std::vector<std::pair<std::string, std::uint64_t>> parse_down_notices(const json& d);
/// A query: the service name, when valid.
[[nodiscard]] std::optional<std::string> parse_query(const json& q);

// ---- member tags: {"tags": {key: value}} as registry metadata ----
inline constexpr std::size_t max_tags = 32;
inline constexpr std::size_t max_tag_key_bytes = 64;
inline constexpr std::size_t max_tag_value_bytes = 256;
using tags = std::map<std::string, std::string>;
[[nodiscard]] json tags_announcement(const tags& t);
/// Within the limits above, valid UTF-8, and the announcement at most
/// max_metadata_bytes serialized.
[[nodiscard]] bool valid_tags(const tags& t) noexcept;

// ---- placement: member announcements {"w": weight, "n": shards}, marks {"shard": token} ----
[[nodiscard]] json member_announcement(double weight, std::uint32_t shards);
/// The weight of an announcement for a group of `shards` shards; nullopt
/// when it announces another count or a weight outside (0, 1e6].
[[nodiscard]] std::optional<double> member_weight(const json& metadata, std::uint32_t shards);
/// Fencing marks {"<shard>": token} of shards below `shards` (decimal names
/// without leading zeros or signs).
[[nodiscard]] std::vector<std::pair<std::uint32_t, std::uint64_t>> parse_marks(const json& f, std::uint32_t shards);

// ---- reminders: key the name, value {"at": ms, "e": every ms, "p": payload} ----
inline constexpr std::size_t max_reminder_name_bytes = 256;
inline constexpr std::size_t max_reminder_payload_bytes = 64 * 1024;
inline constexpr std::uint64_t max_reminder_time_ms = std::uint64_t{1} << 44;
inline constexpr std::uint64_t max_reminder_every_ms = 366ull * 24 * 3600 * 1000;
[[nodiscard]] json reminder_value(std::uint64_t at, std::uint64_t every, json payload);
[[nodiscard]] bool valid_reminder(const std::string& name, const json& v);

}  // namespace barrel_p2p::detail::consumer_wire
