#include "barrel_p2p/members.hpp"

#include "barrel_p2p/registry.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "consumer_wire.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <stdexcept>

namespace barrel_p2p {

namespace consumer_wire = detail::consumer_wire;

namespace {

constexpr const char* service_name = "barrel_p2p.members";

json announcement(const member_tags& tags) { return consumer_wire::tags_announcement(tags); }

static_assert(members::max_tags == consumer_wire::max_tags && members::max_tag_key_bytes == consumer_wire::max_tag_key_bytes &&
              members::max_tag_value_bytes == consumer_wire::max_tag_value_bytes &&
              registry::max_metadata_bytes == consumer_wire::max_metadata_bytes);

// The tags of an announcement; nullopt when it is not one (a peer's
// metadata is checked as carefully as a local call's arguments).
std::optional<member_tags> tags_of(const json& metadata) {
  const auto t = metadata.find("tags");
  if (t == metadata.end() || !t->is_object() || t->size() > members::max_tags) return std::nullopt;
  member_tags out;
  for (const auto& [k, v] : t->items()) {
    if (!v.is_string()) return std::nullopt;
    out.emplace(k, v.get<std::string>());
  }
  if (!valid_member_tags(out)) return std::nullopt;
  return out;
}

std::optional<member> member_of(const service_provider& p) {
  auto tags = tags_of(p.metadata);
  if (!tags) return std::nullopt;
  return member{p.node, p.endpoint, std::move(*tags), p.since_ms};
}

bool has_all(const member& m, const member_tags& having) {
  for (const auto& [k, v] : having) {
    auto it = m.tags.find(k);
    if (it == m.tags.end() || it->second != v) return false;
  }
  return true;
}

}  // namespace

bool valid_member_tags(const member_tags& tags) noexcept { return consumer_wire::valid_tags(tags); }

struct members::impl : std::enable_shared_from_this<members::impl> {
  node& n;
  executor strand;
  std::shared_ptr<registry> reg;
  task_group tasks;
  event_publisher<member_event> events;
  std::map<std::string, member> known;  // what the event loop has announced
  bool closed = false;

  explicit impl(node& nd) : n(nd), strand(nd.get_executor()), tasks(strand), events(strand) {}

  std::vector<member> list(const member_tags& having) const {
    std::vector<member> out;
    for (const auto& p : reg->lookup(service_name)) {
      auto m = member_of(p);
      if (!m) continue;
      // One entry per node: a node re-announcing under a new address
      // retracts the old one; until that arrives, keep the newest.
      if (!out.empty() && out.back().id == m->id) {
        if (m->since_ms >= out.back().since_ms) out.back() = std::move(*m);
        continue;
      }
      out.push_back(std::move(*m));
    }
    std::erase_if(out, [&](const member& m) { return !has_all(m, having); });  // after choosing the newest
    return out;
  }

  // Translates the registry's changes of the directory into member events.
  static task<> follow(std::shared_ptr<impl> self, event_stream<service_event> changes) {
    while (auto ev = co_await changes.next()) {
      if (self->closed) break;
      // A burst (a sync brings many) is one comparison of the whole list.
      changes.discard_pending();
      self->publish_differences();
    }
  }

  void publish_differences() {
    std::map<std::string, member> now;
    for (auto& m : list({})) now.emplace(m.id, std::move(m));
    for (const auto& [id, m] : now) {
      auto it = known.find(id);
      if (it == known.end()) events.publish(member_event{member_event::kind::joined, m});
      else if (it->second != m) events.publish(member_event{member_event::kind::updated, m});
    }
    for (const auto& [id, m] : known)
      if (!now.contains(id)) events.publish(member_event{member_event::kind::left, m});
    known = std::move(now);
  }

  static task<std::shared_ptr<members>> open_on_strand(node& n, member_tags tags) {
    if (auto existing = n.find_attachment<members>()) co_return existing;
    auto i = std::make_shared<impl>(n);
    i->reg = registry::open(n);
    auto m = std::make_shared<members>(i);
    n.set_attachment(m);
    auto changes = i->reg->watch(service_name);
    std::exception_ptr failed;
    try {
      co_await i->reg->register_service(service_name, n.self().address.to_string(), announcement(tags));
    } catch (...) {
      failed = std::current_exception();
    }
    if (failed) {  // nothing half-open stays attached: a later open() starts afresh
      i->closed = true;
      n.clear_attachment<members>();
      std::rethrow_exception(failed);
    }
    for (auto& member : i->list({})) i->known.emplace(member.id, std::move(member));
    i->tasks.spawn("members follow", follow(i, std::move(changes)));
    co_return m;
  }

  static task<> do_set_tags(std::shared_ptr<impl> self, member_tags tags) {
    if (self->closed) throw std::logic_error("members: the node is stopping");
    co_await self->reg->register_service(service_name, self->n.self().address.to_string(), announcement(tags));
  }

  static task<> do_stop(std::shared_ptr<impl> self) {
    if (self->closed) co_return;
    self->closed = true;
    self->events.close();
    co_await self->tasks.stop();
  }
};

task<std::shared_ptr<members>> members::open(node& n, member_tags tags) {
  if (!valid_member_tags(tags))
    throw std::invalid_argument("member tags: at most 32, keys of 1-64 bytes, values of at most 256");
  co_return co_await boost::asio::co_spawn(n.get_executor(), impl::open_on_strand(n, std::move(tags)),
                                           boost::asio::use_awaitable);
}

members::members(std::shared_ptr<impl> i) : impl_(std::move(i)) {}

members::~members() { on_node_destroyed(); }

void members::on_node_destroyed() noexcept {
  impl_->closed = true;
  impl_->tasks.cancel();
  impl_->events.close();
}

task<> members::on_node_stop() {
  co_await boost::asio::co_spawn(impl_->strand, impl::do_stop(impl_), boost::asio::use_awaitable);
}

task<> members::set_tags(member_tags tags) {
  if (!valid_member_tags(tags))
    throw std::invalid_argument("member tags: at most 32, keys of 1-64 bytes, values of at most 256");
  co_await boost::asio::co_spawn(impl_->strand, impl::do_set_tags(impl_, std::move(tags)), boost::asio::use_awaitable);
}

std::vector<member> members::list(const member_tags& having) const { return impl_->list(having); }

std::optional<member> members::get(const std::string& id) const {
  for (auto& m : impl_->list({}))
    if (m.id == id) return m;
  return std::nullopt;
}

event_stream<member_event> members::watch(std::size_t capacity) { return impl_->events.subscribe(capacity); }

}  // namespace barrel_p2p
