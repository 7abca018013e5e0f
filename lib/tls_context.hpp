// TLS 1.3 for the TCP transport: key derivation, the keyring, the OpenSSL
// contexts for both modes, and what a finished handshake proves. Internal to
// the library (not installed): only the TCP transport (lib/tcp_*.cpp) uses it.
#pragma once

#include "barrel_p2p/tcp_transport.hpp"

#include <boost/asio/ssl/context.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace barrel_p2p::detail {

/// A TLS 1.3 external PSK: the identity sent in the clear in the
/// ClientHello, and the 32-byte key.
struct psk_key {
  std::string identity;
  std::array<std::uint8_t, 32> key{};
};

/// The key derived from a cluster secret:
///   key      = HKDF-SHA256(salt = "barrel_p2p", ikm = secret, info = "barrel_p2p tls13 psk v1")
///   identity = "barrel_p2p-v1-" + hex of the first 8 bytes of
///              HKDF-SHA256(salt = "barrel_p2p", ikm = secret, info = "barrel_p2p tls13 psk id v1")
/// The identity names the key without revealing it, so a node with several
/// keys knows which one a dialler used.
[[nodiscard]] psk_key derive_psk(std::string_view secret);

/// The keys one connection may use, fixed when it starts (a keyring change
/// applies to later connections).
struct keyring {
  psk_key primary;              ///< dialled with
  std::vector<psk_key> accepted;  ///< accepted from diallers; primary included
  [[nodiscard]] const psk_key* find(std::string_view identity) const noexcept;
};
/// Throws std::invalid_argument on a secret shorter than min_secret_bytes.
[[nodiscard]] std::shared_ptr<const keyring> make_keyring(const std::string& primary,
                                                          const std::vector<std::string>& accepted);

/// Per-connection state the OpenSSL callbacks read and write.
struct tls_session {
  std::shared_ptr<const keyring> keys;
  bool unknown_key = false;  ///< server side: the dialler's key identity is not ours
};

/// A TLS 1.3-only context for psk mode: PSK callbacks that find the
/// connection's tls_session (attach_session), no certificates, no tickets.
[[nodiscard]] std::shared_ptr<boost::asio::ssl::context> make_psk_context();
/// A TLS 1.3-only context for mutual certificate authentication. Throws
/// std::runtime_error when a file does not load, the key does not match
/// the certificate, or the certificate does not name `node_id`.
[[nodiscard]] std::shared_ptr<boost::asio::ssl::context> make_certificate_context(
    const tls_files& files, const std::string& node_id);

/// psk mode, dialling side: a TLS 1.3 server may ignore the offered key and
/// authenticate with a certificate instead; this refuses every certificate,
/// so that only a server holding the cluster key is accepted. (The server
/// side keeps SSL_VERIFY_NONE: it never asks for certificates.)
void dial_with_key_only(SSL* ssl);

/// Lets the PSK callbacks of `ssl` find `session` (which must outlive it).
void attach_session(SSL* ssl, tls_session* session);

/// True when the peer's verified certificate names `node_id` as a DNS or
/// URI subjectAltName (exact, bytewise).
[[nodiscard]] bool peer_certificate_names(SSL* ssl, std::string_view node_id);

/// 32 bytes both ends of a TLS connection compute alike and neither can
/// choose (RFC 8446 exporter, label "barrel_p2p tie-break"): orders
/// simultaneous connections.
[[nodiscard]] std::optional<std::array<std::uint8_t, 32>> export_tiebreak(SSL* ssl);

/// Why a TLS handshake failed, as a reason and a line for the log.
struct tls_failure {
  handshake_failure reason = handshake_failure::tls;
  std::string detail;
};
[[nodiscard]] tls_failure classify_tls_failure(SSL* ssl, const tls_session& session,
                                               const std::string& error_message);

}  // namespace barrel_p2p::detail
