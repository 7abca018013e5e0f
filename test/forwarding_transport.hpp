// A transport that hands everything to another one: the base of the test
// transports that watch or change traffic (they override on_message or send).
#pragma once

#include <barrel_p2p/transport.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace barrel_p2p::testing {

class forwarding_transport : public transport {
 public:
  explicit forwarding_transport(std::unique_ptr<transport> inner) : inner_(std::move(inner)) {}

  const peer_descriptor& self() const override { return inner_->self(); }
  void on_connected(connected_handler h) override { inner_->on_connected(std::move(h)); }
  void on_disconnected(disconnected_handler h) override { inner_->on_disconnected(std::move(h)); }
  void on_message(channel ch, message_handler h) override { inner_->on_message(ch, std::move(h)); }
  task<> start() override { return inner_->start(); }
  task<> stop() override { return inner_->stop(); }
  task<std::optional<peer_descriptor>> connect(peer_address addr) override { return inner_->connect(std::move(addr)); }
  bool send(const std::string& peer, channel ch, const message_body& body) override { return inner_->send(peer, ch, body); }
  void disconnect(const std::string& peer) override { inner_->disconnect(peer); }
  bool is_connected(const std::string& peer) const override { return inner_->is_connected(peer); }
  std::vector<std::string> connected_peers() const override { return inner_->connected_peers(); }
  read_hold hold_reading(const std::string& peer) override { return inner_->hold_reading(peer); }
  // Forwarded too: without send_queue the broadcast layer sees no queue,
  // so neither its flow control nor the replica's backpressure would act,
  // and a test would run without them unawares.
  std::size_t fullest_send_queue() const override { return inner_->fullest_send_queue(); }
  std::optional<send_queue_state> send_queue(const std::string& peer_id) const override {
    return inner_->send_queue(peer_id);
  }
  void on_send_progress(send_progress_handler h) override { inner_->on_send_progress(std::move(h)); }
  std::optional<handshake_failure> last_dial_failure(const peer_address& addr) const override {
    return inner_->last_dial_failure(addr);
  }
  const transport_counters& counters() const override { return inner_->counters(); }

 private:
  std::unique_ptr<transport> inner_;
};

}  // namespace barrel_p2p::testing
