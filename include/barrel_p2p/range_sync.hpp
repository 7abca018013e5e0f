// Range-based set reconciliation: two nodes find which items (sync_index.hpp)
// differ between them by comparing fingerprints of ranges, splitting the
// ranges that differ and listing the small ones, so a round costs in
// proportion to the differences, not to the state.
//
// After A. Meyer, "Range-Based Set Reconciliation" (arXiv 2212.13567), the
// protocol hoytech/negentropy implements; this is its own encoding. The
// item space is cut into consecutive ranges, each named by its exclusive
// upper bound (the first starts at the smallest item, the last ends at the
// end). For each range a message carries one of:
//   skip         nothing to do here;
//   fingerprint  count and hash sums of the sender's items in the range;
//   list         every item the sender has in the range.
// The receiver answers each range against its own items: an equal
// fingerprint is skipped; an unequal one is answered with its list when it
// holds few items there, otherwise split into `branching` ranges of about
// equal counts, each with its fingerprint. A list is answered in full: the
// receiver now knows what the sender lacks (pushed as data by the caller)
// and what it lacks itself (asked for in `need`, which the sender answers
// with data). A message of skips only is not sent: the exchange is over.
//
// Stateless: each message is answered against the index as it is now, so
// writes meanwhile are simply seen by later rounds. Pure: no I/O.
#pragma once

#include <barrel_p2p/sync_index.hpp>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace barrel_p2p {

using json = nlohmann::json;

struct range_sync_config {
  std::size_t branching = 16;       ///< ranges a differing range is split into (>= 2)
  std::size_t list_threshold = 16;  ///< at most this many items: list them instead of splitting (>= 1)
  std::size_t max_ranges = 2048;    ///< ranges in one message (bounds its size, ~100 KiB; > branching)
  std::size_t max_need = 65'536;    ///< items asked for in one message (>= 1)
};

struct sync_range {
  enum class mode : std::uint8_t { skip = 0, fingerprint = 1, list = 2 };
  std::optional<sync_item> upper;  ///< exclusive; nullopt: to the end
  mode what = mode::skip;
  fingerprint fp;                  ///< mode fingerprint
  std::vector<sync_item> items;    ///< mode list, in order, all within the range
};

struct range_sync_message {
  std::vector<sync_range> ranges;  ///< consecutive, the last one to the end (or empty)
  std::vector<sync_item> need;     ///< the sender lacks these: send their entries
  /// The first message of an exchange (range_sync_start). Lets two nodes
  /// that opened exchanges with each other at once keep only one.
  bool opening = false;
};

/// What to do after a message.
struct range_sync_step {
  std::optional<range_sync_message> reply;  ///< nullopt: nothing more to say
  std::vector<sync_item> send;              ///< ours the peer lacks (or asked for): push their entries
};

/// The first message of an exchange: the whole of `index` as one
/// fingerprint, or as a list when it holds few items.
[[nodiscard]] range_sync_message range_sync_start(const sync_index& index, const range_sync_config& config = {});

/// Answers `message` against `index`. The message must be valid (as
/// parse_range_sync returns it).
[[nodiscard]] range_sync_step range_sync_answer(const sync_index& index, const range_sync_message& message,
                                                const range_sync_config& config = {});

/// The wire form, one json value for the replica channel's CBOR:
/// {"r": [[upper or null, mode, data?], ...], "w": need, "o": 1 when opening} with items as
/// 16-byte binary strings (a list and the need list packed into one string).
[[nodiscard]] json encode_range_sync(const range_sync_message& message);

/// Why a message was refused (a peer's bytes: never trusted).
enum class range_sync_error : std::uint8_t {
  none,
  shape,          ///< not the documented shape
  order,          ///< bounds not increasing, or a list item outside its range or out of order
  too_large,      ///< more ranges, items or need entries than the limits
};

struct range_sync_parse_result {
  std::optional<range_sync_message> message;
  range_sync_error error = range_sync_error::none;
};

/// Validates and decodes a peer's message; never throws. Limits: at most
/// `config.max_ranges` ranges, `config.max_need` needed items, and
/// max_ranges × list_threshold items in all lists together (what an answer
/// under the same config can hold). Both sides must use the same config.
[[nodiscard]] range_sync_parse_result parse_range_sync(const json& wire, const range_sync_config& config = {}) noexcept;

}  // namespace barrel_p2p
