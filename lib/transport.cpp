#include "barrel_p2p/transport.hpp"

#include "barrel_p2p/cbor.hpp"

namespace barrel_p2p {

std::string peer_address::to_string() const { return host + ":" + std::to_string(port); }

json to_json(const peer_descriptor& d) {
  return {{"id", d.id}, {"host", d.address.host}, {"port", d.address.port}};
}

std::optional<peer_descriptor> descriptor_from_json(const json& j) noexcept {
  try {
    if (!j.is_object()) return std::nullopt;
    auto id = j.find("id");
    auto host = j.find("host");
    auto port = j.find("port");
    if (id == j.end() || host == j.end() || port == j.end()) return std::nullopt;
    if (!id->is_string() || !host->is_string() || !port->is_number_unsigned()) return std::nullopt;
    const auto& id_s = id->get_ref<const std::string&>();
    const auto& host_s = host->get_ref<const std::string&>();
    const auto port_n = port->get<std::uint64_t>();
    if (id_s.empty() || id_s.size() > 255 || host_s.empty() || host_s.size() > 255 ||
        port_n > 65535)
      return std::nullopt;
    return peer_descriptor{id_s, {host_s, static_cast<std::uint16_t>(port_n)}};
  } catch (...) {
    return std::nullopt;
  }
}

message_body encode_body(const json& message) { return message_body(share_bytes(encode_cbor(message))); }

std::string_view to_string(disconnect_reason r) noexcept {
  switch (r) {
    case disconnect_reason::closed_locally: return "closed_locally";
    case disconnect_reason::closed_by_peer: return "closed_by_peer";
    case disconnect_reason::heartbeat_timeout: return "heartbeat_timeout";
    case disconnect_reason::io_error: return "io_error";
    case disconnect_reason::protocol_error: return "protocol_error";
    case disconnect_reason::replaced: return "replaced";
  }
  return "unknown";
}

std::string_view to_string(handshake_failure f) noexcept {
  switch (f) {
    case handshake_failure::timeout: return "timeout";
    case handshake_failure::over_capacity: return "over_capacity";
    case handshake_failure::tls: return "tls";
    case handshake_failure::unknown_key: return "unknown_key";
    case handshake_failure::certificate: return "certificate";
    case handshake_failure::identity: return "identity";
    case handshake_failure::protocol: return "protocol";
    case handshake_failure::self: return "self";
    case handshake_failure::duplicate_id: return "duplicate_id";
    case handshake_failure::id_in_use: return "id_in_use";
  }
  return "unknown";
}

}  // namespace barrel_p2p
