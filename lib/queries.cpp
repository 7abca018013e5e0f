#include "barrel_p2p/queries.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "barrel_p2p/detail/wake_signal.hpp"
#include "log_limiter.hpp"
#include "query_wire.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <set>
#include <stdexcept>

namespace barrel_p2p {

namespace qw = detail::query_wire;

namespace {

// An answer's envelope around its payload: {"i": id, "q": digest, "p": ...}.
constexpr std::size_t answer_overhead = 32;

}  // namespace

struct queries::impl : std::enable_shared_from_this<queries::impl> {
  // One query this node asked, collecting answers.
  struct pending_query {
    pending_query(executor ex, duration at, std::size_t max)
        : started(at), max_answers(max), out(ex), done(std::make_shared<wake_signal>(std::move(ex))) {}
    duration started;
    std::size_t max_answers;
    std::uint64_t digest = 0;  // of the request as broadcast
    std::set<std::string> answered;
    event_publisher<query_answer> out;
    std::shared_ptr<wake_signal> done;  // wakes the expiry early (enough answers, stop)
  };

  node& n;
  executor strand;
  queries_config config;
  task_group tasks;
  std::map<std::string, query_handler> handlers;
  std::map<std::uint64_t, std::unique_ptr<pending_query>> pending;
  std::size_t running = 0;
  queries_counters counters;
  detail::log_limiter log_limit;
  logger logger_{n.config().log, n.id(), "queries"};
  bool closed = false;

  impl(node& nd, queries_config c) : n(nd), strand(nd.get_executor()), config(c), tasks(strand) {}

  // At most one line every 10 s: peers choose what this layer logs about.
  void log(const std::string& what) {
    if (logger_ && log_limit.allow(n.sched().now(), std::chrono::seconds(10))) logger_(what);
  }

  // This node's own tags, from its member directory when it has one open.
  member_tags own_tags() const {
    auto dir = n.find_attachment<members>();
    if (!dir) return {};
    auto me = dir->get(n.id());
    return me ? me->tags : member_tags{};
  }

  // ---- answering --------------------------------------------------------------

  void on_request(std::span<const std::uint8_t> bytes, const std::string& origin) {
    if (closed) return;
    ++counters.requests_received;
    auto r = qw::parse_request(bytes);
    if (!r || r->asker.id != origin) {
      ++counters.bad_messages;
      log("dropped a malformed query request from " + origin);
      return;
    }
    serve(std::move(*r), qw::request_digest(bytes));
  }

  void serve(qw::request r, std::uint64_t digest) {
    const auto h = handlers.find(r.name);
    // The directory is read only for a tag filter (it lists every member).
    if (h == handlers.end() || !qw::picks(r, n.id(), r.tags.empty() ? member_tags{} : own_tags())) {
      ++counters.requests_filtered;
      return;
    }
    // The deadline on this node's own monotonic clock, from the time the
    // asker gave (wall clocks may differ by more than a query lasts).
    if (r.ttl_ms == 0) {
      ++counters.requests_expired;
      return;
    }
    const auto deadline = n.sched().now() + duration{static_cast<duration::rep>(std::min<std::uint64_t>(r.ttl_ms, 86'400'000))};
    if (running >= config.max_running_handlers) {
      ++counters.requests_busy;
      log("dropped a query for " + r.name + ": " + std::to_string(running) + " handlers running");
      return;
    }
    ++running;
    ++counters.handled;
    tasks.spawn("query handler", run_handler(shared_from_this(), std::move(r), digest, deadline, h->second));
  }

  static task<> run_handler(std::shared_ptr<impl> self, qw::request r, std::uint64_t digest, duration deadline,
                            query_handler handler) {
    struct done_running {
      impl& i;
      ~done_running() { --i.running; }
    } guard{*self};
    std::optional<json> result;
    std::string failure;
    query_request asked;  // a local, not a braced temporary: GCC 12 destroys those twice in co_await calls
    asked.name = r.name;
    asked.payload = r.payload;
    asked.from = r.asker.id;
    asked.id = r.id;
    asked.digest = digest;
    try {
      result = co_await handler(std::move(asked));
    } catch (...) {
      failure = exception_text(std::current_exception());
    }
    // Once the node is gone (destroyed without stop()), nothing of it may
    // be touched: not its clock, not its log.
    if (self->closed) co_return;
    if (!failure.empty()) {
      ++self->counters.handler_errors;
      self->log("the handler of " + r.name + " threw: " + failure);
      co_return;
    }
    if (!result) co_return;
    if (self->n.sched().now() >= deadline) {
      ++self->counters.answers_unsent;
      co_return;
    }
    if (r.asker.id == self->n.id()) {  // its own question: no network
      ++self->counters.answers_sent;
      self->deliver(r.asker.id, r.id, digest, std::move(*result));
      co_return;
    }
    auto bytes = qw::encode(qw::answer{r.id, digest, std::move(*result)});
    if (bytes.size() > self->config.max_payload_bytes + answer_overhead) {
      ++self->counters.answers_unsent;
      self->log("not answering " + r.name + ": the answer is " + std::to_string(bytes.size()) +
                " bytes, over max_payload_bytes");
      co_return;
    }
    auto& net = self->n.net();
    if (!net.is_connected(r.asker.id)) {
      // The asker is no neighbour: dial it. The connection is a stray one to
      // HyParView, closed by its sweep (as is one that reached another node:
      // it may be in use by someone else, so it is not closed here).
      const auto who = co_await net.connect(r.asker.address);
      if (self->closed) co_return;
      if (!who || who->id != r.asker.id) {
        ++self->counters.answers_unsent;
        self->log("could not reach " + r.asker.id + " at " + r.asker.address.to_string() + " to answer " + r.name);
        co_return;
      }
    }
    if (net.send(r.asker.id, channel::query, message_body(share_bytes(bytes))))
      ++self->counters.answers_sent;
    else
      ++self->counters.answers_unsent;
  }

  // ---- asking -----------------------------------------------------------------

  bool on_answer(const std::string& from, std::span<const std::uint8_t> bytes) {
    if (closed) return true;
    // Sized before it is decoded: an answer larger than this node would
    // send is no answer it takes.
    auto a = bytes.size() <= config.max_payload_bytes + answer_overhead ? qw::parse_answer(bytes) : std::nullopt;
    if (!a) {
      ++counters.bad_messages;
      log("dropped a malformed query answer from " + from);
      return true;  // counted here; the connection itself is fine
    }
    deliver(from, a->id, a->digest, std::move(a->payload));
    return true;
  }

  void deliver(const std::string& from, std::uint64_t id, std::uint64_t digest, json payload) {
    const auto it = pending.find(id);
    if (it == pending.end()) {  // a query ends at its timeout or its max_answers
      ++counters.answers_late;
      return;
    }
    auto& q = *it->second;
    if (digest != q.digest) {
      ++counters.answers_foreign;
      log("dropped an answer from " + from + " to another question under a pending query's id");
      return;
    }
    if (!q.answered.insert(from).second) {
      ++counters.answers_duplicate;
      return;
    }
    ++counters.answers_received;
    q.out.publish(query_answer{from, std::move(payload), n.sched().now() - q.started});
    if (q.answered.size() >= q.max_answers) finish(id);
  }

  // Ends the stream of query `id` (its readers get what was buffered).
  void finish(std::uint64_t id) {
    const auto it = pending.find(id);
    if (it == pending.end()) return;
    it->second->out.close();
    it->second->done->notify();
    pending.erase(it);
  }

  static task<> expire(std::shared_ptr<impl> self, std::uint64_t id, std::shared_ptr<wake_signal> done,
                       duration timeout) {
    using namespace boost::asio::experimental::awaitable_operators;
    co_await (self->n.sched().sleep(timeout) || done->wait());
    self->finish(id);
  }

  static task<event_stream<query_answer>> do_ask(std::shared_ptr<impl> self, std::string name, json payload,
                                                 query_options options) {
    if (self->closed) throw std::logic_error("queries: the node is stopping");
    if (self->pending.size() >= self->config.max_pending)
      throw std::length_error("queries: " + std::to_string(self->pending.size()) +
                              " queries are collecting answers (max_pending)");
    qw::request r;
    r.id = self->n.clock().now().pack();  // unique on this node, across restarts too
    r.name = std::move(name);
    r.payload = std::move(payload);
    r.asker = self->n.self();
    r.ttl_ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(options.timeout).count());
    r.nodes = std::move(options.nodes);
    r.tags = std::move(options.tags);
    const std::size_t max = options.max_answers == 0 ? self->config.max_answers
                                                     : std::min(options.max_answers, self->config.max_answers);
    auto q = std::make_unique<pending_query>(self->strand, self->n.sched().now(), max);
    auto stream = q->out.subscribe(max);
    auto done = q->done;
    auto bytes = share_bytes(qw::encode(r));
    const auto digest = qw::request_digest(bytes.bytes());
    q->digest = digest;
    self->pending.emplace(r.id, std::move(q));
    ++self->counters.asked;
    self->n.broadcast().broadcast(qw::broadcast_tag, std::move(bytes));
    self->tasks.spawn("query expiry", expire(self, r.id, std::move(done), options.timeout));
    ++self->counters.requests_received;
    self->serve(std::move(r), digest);  // this node answers too, when it handles the name
    co_return stream;
  }

  void close_all() {
    closed = true;
    while (!pending.empty()) finish(pending.begin()->first);
  }

  static task<> do_stop(std::shared_ptr<impl> self) {
    if (self->closed) co_return;
    self->close_all();
    self->n.broadcast().unsubscribe(qw::broadcast_tag);
    self->n.net().on_message(channel::query, nullptr);
    co_await self->tasks.stop();
  }

  static task<std::shared_ptr<queries>> open_on_strand(node& n, queries_config config) {
    if (auto existing = n.find_attachment<queries>()) co_return existing;
    auto i = std::make_shared<impl>(n, config);
    std::weak_ptr<impl> weak = i;
    n.broadcast().subscribe(qw::broadcast_tag, [weak](const plumtree::delivery& d) {
      if (auto s = weak.lock()) s->on_request(d.payload.bytes(), std::string(d.origin));
    });
    n.net().on_message(channel::query, [weak](const std::string& from, const byte_slice& body) {
      auto s = weak.lock();
      return s ? s->on_answer(from, body.bytes()) : true;
    });
    auto q = std::make_shared<queries>(i);
    n.set_attachment(q);
    co_return q;
  }
};

task<std::shared_ptr<queries>> queries::open(node& n, queries_config config) {
  if (config.max_answers == 0 || config.max_pending == 0 || config.max_running_handlers == 0 ||
      config.max_timeout <= duration::zero())
    throw std::invalid_argument("queries_config: max_answers, max_pending, max_running_handlers and max_timeout must be positive");
  co_return co_await boost::asio::co_spawn(n.get_executor(), impl::open_on_strand(n, config),
                                           boost::asio::use_awaitable);
}

queries::queries(std::shared_ptr<impl> i) : impl_(std::move(i)) {}

queries::~queries() { on_node_destroyed(); }

void queries::on_node_destroyed() noexcept {
  impl_->tasks.cancel();
  impl_->close_all();
}

task<> queries::on_node_stop() {
  co_await boost::asio::co_spawn(impl_->strand, impl::do_stop(impl_), boost::asio::use_awaitable);
}

void queries::handle(const std::string& name, query_handler handler) {
  if (!qw::valid_name(name)) throw std::invalid_argument("query name: 1 to 200 bytes of UTF-8");
  if (!handler) throw std::invalid_argument("query handler: empty");
  impl_->handlers[name] = std::move(handler);
}

void queries::unhandle(const std::string& name) { impl_->handlers.erase(name); }

task<event_stream<query_answer>> queries::ask(std::string name, json payload, query_options options) {
  if (!qw::valid_name(name)) throw std::invalid_argument("query name: 1 to 200 bytes of UTF-8");
  if (options.timeout <= duration::zero() || options.timeout > impl_->config.max_timeout)
    throw std::invalid_argument("query timeout: above zero and at most max_timeout");
  if (encode_cbor(payload).size() > impl_->config.max_payload_bytes)
    throw std::invalid_argument("query payload: over max_payload_bytes");
  if (options.nodes.size() > qw::max_filter_nodes)
    throw std::invalid_argument("query filter: at most 1024 node ids");
  for (const auto& id : options.nodes)
    if (id.empty() || id.size() > 255) throw std::invalid_argument("query filter: node ids of 1 to 255 bytes");
  if (!valid_member_tags(options.tags)) throw std::invalid_argument("query filter: tags over the member tag limits");
  co_return co_await boost::asio::co_spawn(impl_->strand,
                                           impl::do_ask(impl_, std::move(name), std::move(payload), std::move(options)),
                                           boost::asio::use_awaitable);
}

queries_counters queries::counters() const { return impl_->counters; }

std::size_t queries::pending() const { return impl_->pending.size(); }

}  // namespace barrel_p2p
