// Queries with answers: ask every node (or the nodes a filter picks) a
// named question and collect their answers (docs/concepts/queries.md).
//
// The request travels by Plumtree, like any broadcast, so it reaches every
// node at the cost of one tree. A node that handles the name, and that the
// filter picks, runs its handler and sends the answer straight back to the
// asker over the cluster transport (on the connection it has to the asker,
// or on one it dials; the authenticated connection names the answering
// node, the answer does not). The asker reads the answers as a stream that
// ends when the timeout passes or enough answers came.
//
// Bounded everywhere: request and answer sizes, the answers one query
// collects, the queries a node has in flight, the handlers it runs at once.
// A handler that finishes past the query's time left sends nothing; answers that arrive late,
// twice from one node, or for a query this node did not ask are dropped and
// counted.
#pragma once

#include <barrel_p2p/event_stream.hpp>
#include <barrel_p2p/members.hpp>
#include <barrel_p2p/node.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace barrel_p2p {

/// Which nodes answer, and how long and how many answers the asker waits for.
struct query_options {
  /// Only these nodes answer (ids); empty: any node that handles the name.
  std::vector<std::string> nodes;
  /// Only nodes whose member tags (members.hpp) carry every one of these
  /// with that value. A node that has not opened its member directory has
  /// no tags, so a tag filter never picks it.
  member_tags tags;
  /// The stream ends this long after ask(); answers after it are dropped.
  /// The request carries it as time left: each node gives its handler until
  /// that long after the request reached it (on its own clock), and sends
  /// nothing after.
  duration timeout = std::chrono::seconds(5);
  /// The stream ends after this many answers; 0 means the configured
  /// ceiling (queries_config::max_answers).
  std::size_t max_answers = 0;
};

/// What a handler is asked.
struct query_request {
  std::string name;
  json payload;
  std::string from;  ///< the asking node's id
  std::uint64_t id = 0;  ///< the query's id, unique on the asking node (for logs)
  std::uint64_t digest = 0;  ///< of the request's bytes; the answer carries it back, the asker checks it
};

/// One node's answer.
struct query_answer {
  std::string node;  ///< the answering node (as its connection authenticated it)
  json payload;
  duration after{};  ///< time from ask() to its arrival
};

/// Answers the question; nullopt (or a throw, counted and logged) sends no
/// answer. Runs on the node's executor; it may await (the answer is sent
/// when it returns, unless the query's deadline has passed by then).
using query_handler = std::function<task<std::optional<json>>(query_request)>;

struct queries_config {
  /// Largest request or answer payload, CBOR-encoded. Larger requests are
  /// refused by ask() (std::invalid_argument). An answer message over this
  /// plus 32 bytes (its envelope) is not sent, and one received from a
  /// peer is dropped (bad_messages).
  std::size_t max_payload_bytes = 64 * 1024;
  /// Ceiling on query_options::max_answers (and its default).
  std::size_t max_answers = 10'000;
  /// Ceiling on query_options::timeout.
  duration max_timeout = std::chrono::minutes(5);
  /// Queries this node has asked and still collects; ask() beyond it
  /// throws std::length_error.
  std::size_t max_pending = 256;
  /// Handlers running at once on this node; requests beyond it are
  /// dropped (counted).
  std::size_t max_running_handlers = 64;
};

struct queries_counters {
  std::uint64_t asked = 0;               ///< queries this node asked
  std::uint64_t answers_received = 0;    ///< answers put on an asker's stream
  std::uint64_t answers_duplicate = 0;   ///< a second answer from one node to one query, dropped
  std::uint64_t answers_late = 0;        ///< answers to no pending query (late, past max_answers, or never asked), dropped
  std::uint64_t answers_foreign = 0;     ///< answers to another question under a pending query's id, dropped
  std::uint64_t requests_received = 0;   ///< requests delivered here (own ones included)
  std::uint64_t requests_filtered = 0;   ///< not for this node (filter, or no handler)
  std::uint64_t requests_expired = 0;    ///< arrived with no time left
  std::uint64_t requests_busy = 0;       ///< dropped: max_running_handlers were running
  std::uint64_t handled = 0;             ///< handler runs
  std::uint64_t handler_errors = 0;      ///< handlers that threw
  std::uint64_t answers_sent = 0;        ///< answers handed to the transport (or to an own stream)
  std::uint64_t answers_unsent = 0;      ///< too large, past the time left, or the asker unreachable
  std::uint64_t bad_messages = 0;        ///< malformed requests, malformed or oversized answers, from peers
};

class queries : public node::attachment, public std::enable_shared_from_this<queries> {
 public:
  /// Names: 1 to max_name_bytes bytes of UTF-8.
  static constexpr std::size_t max_name_bytes = 200;

  /// The node's queries, started on first use (the same object for later
  /// calls, whose config is ignored). Any executor.
  static task<std::shared_ptr<queries>> open(node& n, queries_config config = {});
  ~queries() override;

  /// This node answers `name` with `handler` (replacing an earlier one).
  /// Throws std::invalid_argument on a bad name. Node's executor.
  void handle(const std::string& name, query_handler handler);
  /// This node no longer answers `name`. Node's executor.
  void unhandle(const std::string& name);

  /// Asks `name` of the nodes `options` picks, this one included when it
  /// handles the name. The stream yields each answer as it arrives and ends
  /// at the timeout or after max_answers. Throws std::invalid_argument (bad
  /// name, payload over max_payload_bytes, a timeout not in (0,
  /// max_timeout], a filter over its limits), std::length_error
  /// (max_pending queries collecting) and std::logic_error once closed.
  /// Any executor. Read the stream on the node's executor, one reader at
  /// a time (event_stream.hpp: no lock).
  task<event_stream<query_answer>> ask(std::string name, json payload, query_options options = {});

  /// Node's executor.
  [[nodiscard]] queries_counters counters() const;
  /// Queries this node is collecting answers for now. Node's executor.
  [[nodiscard]] std::size_t pending() const;

  task<> on_node_stop() override;
  void on_node_destroyed() noexcept override;

  struct impl;
  explicit queries(std::shared_ptr<impl> i);

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
