// A TCP connection once established: its three loops (read, write, watch)
// and its frames in and out (tcp_transport_impl.hpp).
#include "printable.hpp"
#include "tcp_transport_impl.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cstring>
#include <variant>

namespace barrel_p2p::detail::tcp_impl {

using namespace asio::experimental::awaitable_operators;

task<> tcp_transport_impl::run_connection(std::shared_ptr<connection> conn) {
  connections_.push_back(conn);
  error_code ec;
  conn->socket().set_option(tcp::no_delay(true), ec);
  const auto endpoint = conn->socket().remote_endpoint(ec);
  conn->remote = ec ? std::string("?") : endpoint.address().to_string() + ":" +
                                              std::to_string(endpoint.port());
  conn->last_received = conn->last_sent = clock_now();
  auto reason = disconnect_reason::closed_locally;
  try {
    const bool shook = co_await handshake_within_timeout(conn);
    release_pending(*conn);
    if (shook && !stopping_) {
      establish(conn);
      auto r = co_await (read_loop(conn) || write_loop(conn) || watch_loop(conn));
      reason = std::visit([](disconnect_reason why) { return why; }, r);
    }
  } catch (const std::exception& e) {
    release_pending(*conn);
    // Cancellation by stop(); anything else is a bug worth a line.
    if (!stopping_) log("connection to " + describe(*conn) + " failed: " + e.what());
    reason = disconnect_reason::io_error;
  }
  finish(conn, reason);
}

task<disconnect_reason> tcp_transport_impl::read_loop(std::shared_ptr<connection> conn) {
  try {
    for (;;) {
      // A receive budget (hold_reading): the peer's frames wait in TCP.
      // Its silence meanwhile is ours: the watchdog does not count it.
      while (read_holds_.held(conn->peer.id) && !conn->closing) {
        start_hold(*conn);  // (already, unless it connected while held)
        conn->read_wake.expires_at(asio::steady_timer::time_point::max());
        co_await conn->read_wake.async_wait(use_tuple);
      }
      auto in = co_await read_frame(conn, config_.max_frame_bytes);
      switch (in.st) {
        case frame_in::status::ok: break;
        case frame_in::status::closed: co_return disconnect_reason::closed_by_peer;
        case frame_in::status::failed: co_return disconnect_reason::io_error;
        case frame_in::status::bad_frame:
          log("closing connection to " + describe(*conn) + ": " + in.detail);
          co_return disconnect_reason::protocol_error;
      }
      if (in.ch == channel::control) {
        // A heartbeat (hearing it was the point) or a hold notice; it
        // must still be CBOR.
        auto control = decode_cbor(in.body.bytes(), handshake_cbor_limits);
        if (!control) {
          ++counters_.bad_frames;
          log("closing connection to " + describe(*conn) + ": bad frame: undecodable control body");
          co_return disconnect_reason::protocol_error;
        }
        if (auto held = parse_hold_notice(*control)) {
          if (conn->held_by_peer && !*held) conn->hold_ended_at = clock_now();
          conn->held_by_peer = *held;
        }
        continue;
      }
      if (!deliver(*conn, in.ch, byte_slice(std::move(in.body)))) {
        ++counters_.bad_frames;
        log("closing connection to " + describe(*conn) + ": bad frame: undecodable body on channel " +
            std::to_string(static_cast<int>(in.ch)));
        co_return disconnect_reason::protocol_error;
      }
    }
  } catch (...) {
    co_return disconnect_reason::closed_locally;  // cancelled
  }
}

void tcp_transport_impl::send_hold_notice(connection& conn, bool held) {
  if (conn.closing) return;
  conn.notice_due = held;
  conn.wake.cancel();
}

bool tcp_transport_impl::deliver(const connection& conn, channel ch, const byte_slice& body) {
  // A connection we are closing ourselves delivers nothing more; a
  // replaced one still does (its peer is connected) while it drains.
  if (conn.closing == disconnect_reason::closed_locally) return true;
  if (!peers_.contains(conn.peer.id)) return true;
  // No handler: nobody listens on this channel here.
  const auto& h = handlers_[static_cast<std::size_t>(ch)];
  if (!h) return true;
  try {
    return h(conn.peer.id, body);
  } catch (...) {
    log("message handler threw: " + exception_text(std::current_exception()));
  }
  return true;
}

task<disconnect_reason> tcp_transport_impl::write_loop(std::shared_ptr<connection> conn) {
  try {
    for (;;) {
      while (!conn->queue.empty() || conn->notice_due) {
        std::vector<queued_frame> batch;
        std::size_t bytes = 0;
        if (conn->notice_due) {  // our hold state first (send_hold_notice)
          const auto body = encode_body(make_hold_notice(*conn->notice_due));
          conn->notice_due.reset();
          batch.push_back({encode_frame_header(channel::control, body.size()), body});
        }
        std::size_t dequeued = 0;  // as the queue counted them (the notice was not queued)
        while (!conn->queue.empty() && batch.size() < write_batch_frames && bytes < write_batch_bytes) {
          batch.push_back(conn->queue.pop());
          bytes += batch.back().body.size();
          dequeued += frame_queue::cost(batch.back());
        }
        if (!co_await write_frames(conn, batch)) co_return disconnect_reason::io_error;
        if (dequeued > 0) report_send_progress(conn->peer.id, dequeued);
      }
      if (conn->closing) {
        if (!conn->write_shut) {
          conn->write_shut = true;
          error_code ignored;
          // A TCP half-close (no close_notify): the peer reads it as the
          // end of the stream (SSL_OP_IGNORE_UNEXPECTED_EOF).
          conn->socket().shutdown(tcp::socket::shutdown_send, ignored);
        }
        conn->wake.expires_at(asio::steady_timer::time_point::max());
        co_await conn->wake.async_wait(use_tuple);  // until the reader or watchdog ends it
        continue;
      }
      const auto idle = clock_now() - conn->last_sent;
      if (idle >= config_.heartbeat_interval) {
        // (Named, not a braced temporary: GCC 12 destroys aggregate
        // temporaries in a co_await expression twice.)
        const queued_frame heartbeat{
            encode_frame_header(channel::control, heartbeat_body().size()), heartbeat_body()};
        if (!co_await write_frame(conn, heartbeat)) co_return disconnect_reason::io_error;
        continue;
      }
      conn->wake.expires_after(config_.heartbeat_interval - idle);
      co_await conn->wake.async_wait(use_tuple);
    }
  } catch (...) {
    co_return disconnect_reason::closed_locally;  // cancelled
  }
}

task<disconnect_reason> tcp_transport_impl::watch_loop(std::shared_ptr<connection> conn) {
  try {
    const auto limit = config_.heartbeat_timeout;
    for (;;) {
      const auto now = clock_now();
      duration next;
      if (conn->closing) {
        // Draining: give the peer until the deadline to close its side.
        if (now - conn->closing_since >= limit) co_return *conn->closing;
        next = conn->closing_since + limit;
      } else {
        if (!conn->read_held && now - conn->last_received >= limit) {
          ++counters_.heartbeat_timeouts;
          log("nothing heard from " + describe(*conn) + " for " +
              std::to_string(limit.count()) + " ms: closing");
          co_return disconnect_reason::heartbeat_timeout;
        }
        // A peer that holds its reading of us (its queued work from us is
        // over its budget) gets longer before a stalled write counts as
        // "not reading"; its heartbeats still must come.
        // Timed from the write's start, never reset by a notice: a peer
        // that sends notices and never reads is closed all the same, at
        // most six timeouts after the write began.
        const bool grace = conn->held_by_peer || (conn->hold_ended_at && now - *conn->hold_ended_at < limit);
        const auto write_limit = grace ? held_write_timeout_factor * limit : limit;
        if (conn->write_started && now - *conn->write_started >= write_limit) {
          ++counters_.heartbeat_timeouts;
          log(describe(*conn) + " has not read for " + std::to_string(write_limit.count()) +
              " ms: closing");
          co_return disconnect_reason::heartbeat_timeout;
        }
        next = conn->read_held ? now + limit : conn->last_received + limit;
        if (conn->write_started) next = std::min(next, *conn->write_started + write_limit);
        // A close may begin while we sleep; look again then.
        next = std::min(next, now + std::max(config_.heartbeat_interval, duration{1}));
      }
      if (!co_await sleep_for(std::max(next - now, duration{1})))
        co_return disconnect_reason::closed_locally;
    }
  } catch (...) {
    co_return disconnect_reason::closed_locally;  // cancelled
  }
}

task<std::tuple<error_code, std::size_t>> tcp_transport_impl::read_some(connection& conn, asio::mutable_buffer b) {
  if (conn.tls) return conn.stream->async_read_some(b, use_tuple);
  return conn.socket().async_read_some(b, use_tuple);
}

task<std::tuple<error_code, std::size_t>> tcp_transport_impl::write_all(connection& conn,
                                                           const std::vector<asio::const_buffer>& b) {
  if (conn.tls) return asio::async_write(*conn.stream, b, use_tuple);
  return asio::async_write(conn.socket(), b, use_tuple);
}

task<error_code> tcp_transport_impl::fill(std::shared_ptr<connection> conn, std::size_t need) {
  auto& b = conn->read_buffer;
  if (conn->read_end - conn->read_begin >= need) co_return error_code{};
  if (conn->read_begin > 0) {  // compact: the unread tail to the front
    std::memmove(b.data(), b.data() + conn->read_begin, conn->read_end - conn->read_begin);
    conn->read_end -= conn->read_begin;
    conn->read_begin = 0;
  }
  while (conn->read_end < need) {
    auto [ec, n] = co_await read_some(*conn, asio::buffer(b.data() + conn->read_end, b.size() - conn->read_end));
    if (ec) co_return ec;
    conn->read_end += n;
    conn->last_received = clock_now();
  }
  co_return error_code{};
}

task<frame_in> tcp_transport_impl::read_frame(std::shared_ptr<connection> conn, std::size_t max_frame_bytes) {
  frame_in in;
  const auto failed = [&](const error_code& ec) {
    const bool eof = ec == asio::error::eof || ec == asio::ssl::error::stream_truncated;
    in.st = eof ? frame_in::status::closed : frame_in::status::failed;
    in.detail = eof ? "closed by peer" : ec.message();
    return std::move(in);
  };
  const auto bad = [&](std::string detail) {
    ++counters_.bad_frames;
    in.st = frame_in::status::bad_frame;
    in.detail = std::move(detail);
    return std::move(in);
  };
  // Small during the handshake (an unauthenticated peer costs ~1 KiB);
  // grown once established. resize() keeps bytes already buffered.
  const auto want = std::min(read_buffer_size, max_frame_bytes);
  if (conn->read_buffer.size() < want) conn->read_buffer.resize(want);
  // The length is judged as soon as its 4 bytes are in (usually the whole
  // header comes in the same read).
  if (auto ec = co_await fill(conn, 4)) co_return failed(ec);
  frame_header_bytes header{};
  const auto copy_header = [&] {
    const auto avail = std::min(conn->read_end - conn->read_begin, header.size());
    std::memcpy(header.data(), conn->read_buffer.data() + conn->read_begin, avail);
  };
  copy_header();
  auto parsed = parse_frame_length(header, max_frame_bytes);
  if (parsed) {
    if (auto ec = co_await fill(conn, frame_header_size)) co_return failed(ec);
    copy_header();
    parsed = parse_frame_header(header, max_frame_bytes);
  }
  if (!parsed)
    co_return bad("bad frame: " + std::string(to_string(parsed.error)) + " (length " +
                  std::to_string(parsed.length) + ")");
  conn->read_begin += frame_header_size;
  // The length was checked above; only now is a large body allocated.
  const std::size_t size = parsed.header.body_size;
  shared_bytes body;
  if (size <= conn->read_buffer.size()) {
    if (auto ec = co_await fill(conn, size)) co_return failed(ec);
    body = shared_bytes(std::span<const std::uint8_t>(conn->read_buffer.data() + conn->read_begin, size));
    conn->read_begin += size;
  } else {
    body = shared_bytes::zeroed(size);
    const auto large = body.mutable_bytes();  // nobody else holds it yet
    std::size_t got = conn->read_end - conn->read_begin;
    std::memcpy(large.data(), conn->read_buffer.data() + conn->read_begin, got);
    conn->read_begin = conn->read_end = 0;
    while (got < size) {
      const auto want = std::min(size - got, read_chunk);
      auto [rec, m] = co_await read_some(*conn, asio::buffer(large.data() + got, want));
      if (rec) co_return failed(rec);
      got += m;
      conn->last_received = clock_now();
    }
  }
  ++counters_.frames_received;
  counters_.bytes_received += frame_header_size + size;
  in.ch = parsed.header.ch;
  in.body = std::move(body);
  co_return in;
}

task<bool> tcp_transport_impl::write_frames(std::shared_ptr<connection> conn, const std::vector<queued_frame>& frames) {
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(3 * frames.size());
  for (const auto& f : frames) {
    buffers.push_back(asio::buffer(f.header));
    buffers.push_back(asio::buffer(f.body.head.data(), f.body.head.size()));
    if (!f.body.tail.empty()) buffers.push_back(asio::buffer(f.body.tail.bytes().data(), f.body.tail.size()));
  }
  conn->write_started = clock_now();
  auto [ec, n] = co_await write_all(*conn, buffers);
  conn->write_started.reset();
  if (ec) co_return false;
  counters_.frames_sent += frames.size();
  counters_.bytes_sent += n;
  conn->last_sent = clock_now();
  co_return true;
}

task<bool> tcp_transport_impl::write_frame(std::shared_ptr<connection> conn, const queued_frame& frame) {
  const std::vector<queued_frame> one{frame};
  co_return co_await write_frames(std::move(conn), one);
}

task<bool> tcp_transport_impl::write_direct(std::shared_ptr<connection> conn, message_body body) {
  const queued_frame frame{encode_frame_header(channel::control, body.size()), std::move(body)};
  const bool written = co_await write_frame(std::move(conn), frame);
  co_return written;
}

}  // namespace barrel_p2p::detail::tcp_impl
