// The TCP transport's handshake: TLS 1.3 (PSK or certificates), then a
// hello each way inside it, or an id refusal (tcp_transport_impl.hpp).
#include "printable.hpp"
#include "tcp_transport_impl.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <algorithm>

namespace barrel_p2p::detail::tcp_impl {

using namespace asio::experimental::awaitable_operators;

void tcp_transport_impl::remember_own_nonce(const handshake_nonce& n) {
  own_nonces_[own_nonces_next_] = n;
  own_nonces_next_ = (own_nonces_next_ + 1) % own_nonces_.size();
  own_nonces_size_ = std::min(own_nonces_size_ + 1, own_nonces_.size());
}

bool tcp_transport_impl::is_own_nonce(const handshake_nonce& n) const {
  const auto end = own_nonces_.begin() + static_cast<std::ptrdiff_t>(own_nonces_size_);
  return std::find(own_nonces_.begin(), end, n) != end;
}

task<bool> tcp_transport_impl::handshake_within_timeout(std::shared_ptr<connection> conn) {
  auto r = co_await (handshake(conn) || handshake_deadline(conn));
  std::optional<handshake_error> failure;
  if (r.index() == 0) failure = std::move(std::get<0>(r));
  else failure = handshake_error(handshake_failure::timeout, "timed out");
  if (!failure) co_return true;
  if (conn->outcome) conn->outcome->failure = failure->reason;
  if (!stopping_) note_handshake_failure(failure->reason, "with " + describe(*conn) + ": " + failure->detail);
  co_return false;
}

task<> tcp_transport_impl::handshake_deadline(std::shared_ptr<connection> conn) {
  const bool expired = co_await sleep_for(config_.handshake_timeout);
  // The timer may fire in the same turn as the handshake succeeds: only
  // a handshake still under way is cut off.
  if (expired && conn->state == conn_state::handshaking) conn->close_socket();
  co_return;
}

// GCC 12 at -O2 warns that this coroutine's frame is freed by an operator
// delete that does not match its operator new. Both are Asio's
// awaitable_frame_base pair; the warning is a false positive of GCC's
// inlining of the frame's destruction (it appeared when handshake() moved
// out of the class body, with no change to its code). Silenced for this
// function only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
task<std::optional<handshake_error>> tcp_transport_impl::handshake(std::shared_ptr<connection> conn) {
  using F = handshake_failure;
  try {
    if (!conn->outbound) {
      // Nothing more is allocated for an inbound peer until it sends a
      // byte; until then it may be evicted to make room (see admit()).
      conn->silent = true;
      auto [wec] = co_await conn->raw.async_wait(tcp::socket::wait_read, use_tuple);
      conn->silent = false;
      if (conn->evicted) co_return handshake_error(F::over_capacity, "evicted while silent, to make room");
      if (wec) co_return handshake_error(F::tls, "closed before the handshake: " + wec.message());
    }
    if (conn->tls) {
      conn->tls_session.keys = keys_;
      conn->start_tls();
      SSL* ssl = conn->stream->native_handle();
      detail::attach_session(ssl, &conn->tls_session);
      if (conn->outbound && config_.security == transport_security::psk) detail::dial_with_key_only(ssl);
      const auto side = conn->outbound ? tls_stream::client : tls_stream::server;
      auto [ec] = co_await conn->stream->async_handshake(side, use_tuple);
      if (ec) {
        auto f = detail::classify_tls_failure(ssl, conn->tls_session, ec.message());
        co_return handshake_error(f.reason, std::move(f.detail));
      }
      // A server that ignored our key and sent a certificate instead has
      // been refused by the verify callback; this makes sure of it.
      if (config_.security == transport_security::psk && !SSL_session_reused(ssl))
        co_return handshake_error(F::tls, "the peer did not use the cluster key");
      auto tiebreak = detail::export_tiebreak(ssl);
      if (!tiebreak) co_return handshake_error(F::tls, "cannot export keying material");
      conn->tiebreak = *tiebreak;
    }
    // The dialler speaks first; the accepting side answers with its own
    // hello, or with a refusal when the dialler's id is taken, so that
    // the dialler learns why instead of seeing a closed connection.
    const auto own_nonce = random_nonce();
    remember_own_nonce(own_nonce);
    auto hello_body = encode_body(make_hello(hello_message{protocol_version, self_, own_nonce}));
    if (conn->outbound) {
      const bool sent = co_await write_direct(conn, hello_body);
      if (!sent) co_return handshake_error(conn->tls ? F::tls : F::protocol, "cannot send hello");
    }

    auto in = co_await read_frame(conn, handshake_max_frame_bytes);
    if (in.st != frame_in::status::ok) {
      // Over TLS, a peer that refused our certificate or key says so with
      // an alert that ends this read.
      const auto reason = in.st == frame_in::status::bad_frame || !conn->tls ? F::protocol : F::tls;
      co_return handshake_error(reason, "reading hello: " + in.detail);
    }
    std::optional<hello_message> peer_hello;
    std::optional<id_refusal> refusal;
    if (in.ch == channel::control) {
      if (auto decoded = decode_cbor(in.body.bytes(), handshake_cbor_limits)) {
        peer_hello = parse_hello(*decoded);
        if (!peer_hello && conn->outbound) refusal = parse_id_refusal(*decoded);
      } else {
        ++counters_.bad_frames;
      }
    }
    if (refusal) co_return refused_by_peer(*conn, *refusal);
    if (!peer_hello) co_return handshake_error(F::protocol, "malformed hello");
    const auto& claimed = peer_hello->self;
    if (config_.security == transport_security::certificates &&
        !detail::peer_certificate_names(conn->stream->native_handle(), claimed.id))
      co_return handshake_error(F::identity, "claims id '" + detail::printable(claimed.id) +
                                                 "', which its certificate does not name");
    const bool own_id = claimed.id == self_.id && !is_own_nonce(peer_hello->nonce);
    const auto taken = own_id ? peers_.end() : peers_.find(claimed.id);
    const bool in_use = taken != peers_.end() && taken->second.descriptor.address != claimed.address;
    // Copied: the entry may go while we write below.
    const auto holder = own_id ? self_.address.to_string()
                               : in_use ? taken->second.descriptor.address.to_string() : std::string();
    if (!conn->outbound) {
      auto answer = hello_body;
      if (own_id || in_use) {
        id_refusal refusal_out;
        refusal_out.reason = own_id ? id_refusal::why::own_id : id_refusal::why::in_use;
        refusal_out.holder = holder;
        answer = encode_body(make_id_refusal(refusal_out));
      }
      const bool sent = co_await write_direct(conn, std::move(answer));
      if (!sent) co_return handshake_error(conn->tls ? F::tls : F::protocol, "cannot send hello");
    }
    if (peer_hello->version != protocol_version)
      co_return handshake_error(F::protocol, "protocol version " + std::to_string(peer_hello->version) +
                                                 ", expected " + std::to_string(protocol_version));
    // Our own nonce back: this node reached itself. Any other nonce: a
    // second process runs under this node's id.
    if (claimed.id == self_.id && !own_id) co_return handshake_error(F::self, "connection to self refused");
    if (own_id)
      co_return handshake_error(F::duplicate_id, "duplicate node id '" + detail::printable(self_.id) +
                                                     "': a node listening at " +
                                                     detail::printable(claimed.address.to_string()) +
                                                     " uses it too; give every node its own id");
    if (in_use)
      co_return handshake_error(F::id_in_use, "refused a second node with the id '" +
                                                  detail::printable(claimed.id) + "' (advertising " +
                                                  detail::printable(claimed.address.to_string()) +
                                                  "): the node at " + holder + " is connected under it");
    conn->peer = peer_hello->self;
    if (!conn->tls) conn->tiebreak = conn->outbound ? own_nonce : peer_hello->nonce;
    conn->state = conn_state::hello_received;
    co_return std::nullopt;
  } catch (const std::exception& e) {
    co_return handshake_error(F::protocol, e.what());
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

handshake_error tcp_transport_impl::refused_by_peer(connection& conn, const id_refusal& r) const {
  const auto holder = detail::printable(r.holder);
  // "I am you": with certificates, believed only from a node whose
  // certificate names this node's id (another member cannot say it).
  if (r.reason == id_refusal::why::own_id && config_.security == transport_security::certificates &&
      !detail::peer_certificate_names(conn.stream->native_handle(), self_.id))
    return handshake_error(handshake_failure::identity,
                           "refused this node as a duplicate of its id, which its certificate does not name");
  if (r.reason == id_refusal::why::own_id)
    return handshake_error(handshake_failure::duplicate_id,
                           "duplicate node id '" + detail::printable(self_.id) + "': the node at " + holder +
                               " uses it too; give every node its own id");
  return handshake_error(handshake_failure::id_in_use,
                         "refused this node: another node with the id '" +
                             detail::printable(self_.id) + "' is connected to it, listening at " + holder +
                             " (a node that just restarted at a new address gets in once its old "
                             "connection times out)");
}

}  // namespace barrel_p2p::detail::tcp_impl
