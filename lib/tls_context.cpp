#include "tls_context.hpp"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <stdexcept>

namespace barrel_p2p::detail {
namespace {

namespace ssl = boost::asio::ssl;

// TLS_AES_128_GCM_SHA256: the PSK's hash must be the suite's, SHA-256.
constexpr unsigned char psk_cipher_id[2] = {0x13, 0x01};
constexpr const char* psk_ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";
constexpr const char* tiebreak_label = "barrel_p2p tie-break";

std::array<std::uint8_t, 32> hkdf_sha256(std::string_view secret, std::string_view info) {
  std::array<std::uint8_t, 32> out{};
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* ctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
  EVP_KDF_free(kdf);
  if (!ctx) throw std::runtime_error("tls: HKDF unavailable");
  static const char salt[] = "barrel_p2p";
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<char*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<char*>(salt), sizeof salt - 1),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char*>(info.data()), info.size()),
      OSSL_PARAM_construct_end(),
  };
  const int ok = EVP_KDF_derive(ctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(ctx);
  if (ok != 1) throw std::runtime_error("tls: HKDF failed");
  return out;
}

int session_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

tls_session* session_of(SSL* ssl) {
  return static_cast<tls_session*>(SSL_get_ex_data(ssl, session_index()));
}

SSL_SESSION* psk_session(SSL* ssl, const psk_key& key) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, psk_cipher_id);
  if (!cipher) return nullptr;
  SSL_SESSION* s = SSL_SESSION_new();
  if (!s) return nullptr;
  if (SSL_SESSION_set1_master_key(s, key.key.data(), key.key.size()) != 1 ||
      SSL_SESSION_set_cipher(s, cipher) != 1 ||
      SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION) != 1) {
    SSL_SESSION_free(s);
    return nullptr;
  }
  return s;
}

// Client: offer the primary key. Called a second time with the server's
// hash after a HelloRetryRequest; our key only fits SHA-256 suites.
int use_psk(SSL* ssl, const EVP_MD* md, const unsigned char** id, std::size_t* idlen,
            SSL_SESSION** sess) {
  *sess = nullptr;
  auto* st = session_of(ssl);
  if (!st || !st->keys) return 0;
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, psk_cipher_id);
  // After a HelloRetryRequest the server has fixed the hash; our key only
  // fits SHA-256 suites. (Compared by name: OpenSSL 3 may pass a fetched
  // digest object rather than the static one.)
  if (md != nullptr && (!cipher || EVP_MD_is_a(md, "SHA256") != 1)) return 1;
  const auto& key = st->keys->primary;
  *sess = psk_session(ssl, key);
  if (!*sess) return 0;
  *id = reinterpret_cast<const unsigned char*>(key.identity.data());
  *idlen = key.identity.size();
  return 1;
}

// Server: the key the dialler names, if it is in the keyring. No session
// and no certificate means the handshake fails.
int find_psk(SSL* ssl, const unsigned char* identity, std::size_t len, SSL_SESSION** sess) {
  *sess = nullptr;
  auto* st = session_of(ssl);
  if (!st || !st->keys) return 0;
  const auto* key = st->keys->find({reinterpret_cast<const char*>(identity), len});
  if (!key) {
    st->unknown_key = true;
    return 1;
  }
  *sess = psk_session(ssl, *key);
  return *sess ? 1 : 0;
}

void tls13_only(SSL_CTX* ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  // No resumption: every connection authenticates afresh. A peer's EOF
  // without close_notify is an ordinary end (frames are length-delimited,
  // so a truncation is visible anyway). Buffers are freed while idle.
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
}

std::string openssl_errors() {
  std::string out;
  while (const auto e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

std::string to_hex(const std::uint8_t* p, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

bool names(X509* cert, std::string_view node_id) {
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (!sans) return false;
  bool found = false;
  for (int i = 0; i < sk_GENERAL_NAME_num(sans) && !found; ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(sans, i);
    const ASN1_IA5STRING* s = nullptr;
    if (name->type == GEN_DNS) s = name->d.dNSName;
    if (name->type == GEN_URI) s = name->d.uniformResourceIdentifier;
    if (!s) continue;
    const std::string_view value(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                 static_cast<std::size_t>(ASN1_STRING_length(s)));
    found = value == node_id;
  }
  GENERAL_NAMES_free(sans);
  return found;
}

}  // namespace

psk_key derive_psk(std::string_view secret) {
  psk_key k;
  k.key = hkdf_sha256(secret, "barrel_p2p tls13 psk v1");
  const auto id = hkdf_sha256(secret, "barrel_p2p tls13 psk id v1");
  k.identity = "barrel_p2p-v1-" + to_hex(id.data(), 8);
  return k;
}

const psk_key* keyring::find(std::string_view identity) const noexcept {
  for (const auto& k : accepted)
    if (k.identity == identity) return &k;
  return nullptr;
}

std::shared_ptr<const keyring> make_keyring(const std::string& primary,
                                            const std::vector<std::string>& accepted) {
  const auto check = [](const std::string& s) {
    if (s.size() < min_secret_bytes)
      throw std::invalid_argument("cluster secret too short: " + std::to_string(s.size()) +
                                  " bytes, at least " + std::to_string(min_secret_bytes) +
                                  " required (use e.g. 32 random bytes, base64-encoded)");
  };
  check(primary);
  for (const auto& s : accepted) check(s);
  auto ring = std::make_shared<keyring>();
  ring->primary = derive_psk(primary);
  ring->accepted.push_back(ring->primary);
  for (const auto& s : accepted) {
    auto k = derive_psk(s);
    if (!ring->find(k.identity)) ring->accepted.push_back(std::move(k));
  }
  return ring;
}

std::shared_ptr<ssl::context> make_psk_context() {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls);
  SSL_CTX* native = ctx->native_handle();
  tls13_only(native);
  if (SSL_CTX_set_ciphersuites(native, psk_ciphersuites) != 1)
    throw std::runtime_error("tls: cannot set cipher suites: " + openssl_errors());
  SSL_CTX_set_psk_use_session_callback(native, use_psk);
  SSL_CTX_set_psk_find_session_callback(native, find_psk);
  SSL_CTX_set_verify(native, SSL_VERIFY_NONE, nullptr);  // see dial_with_key_only

  return ctx;
}

std::shared_ptr<ssl::context> make_certificate_context(const tls_files& files,
                                                       const std::string& node_id) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls);
  SSL_CTX* native = ctx->native_handle();
  tls13_only(native);
  const auto fail = [&](const std::string& what, const std::filesystem::path& file) {
    ERR_clear_error();
    return std::runtime_error("tls: " + what + " " + file.string());
  };
  if (SSL_CTX_load_verify_locations(native, files.ca.c_str(), nullptr) != 1)
    throw fail("cannot load the CA file", files.ca);
  if (SSL_CTX_use_certificate_chain_file(native, files.certificate.c_str()) != 1)
    throw fail("cannot load the certificate file", files.certificate);
  if (SSL_CTX_use_PrivateKey_file(native, files.private_key.c_str(), SSL_FILETYPE_PEM) != 1)
    throw fail("cannot load the private key file", files.private_key);
  if (SSL_CTX_check_private_key(native) != 1)
    throw fail("the private key does not match the certificate", files.private_key);
  if (!names(SSL_CTX_get0_certificate(native), node_id))
    throw std::runtime_error("tls: the certificate " + files.certificate.string() +
                             " does not name node id '" + node_id +
                             "' in its subjectAltName (DNS or URI)");
  SSL_CTX_set_verify(native, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return ctx;
}

void dial_with_key_only(SSL* ssl) {
  SSL_set_verify(ssl, SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 0; });
}

void attach_session(SSL* ssl, tls_session* session) {
  SSL_set_ex_data(ssl, session_index(), session);
}

bool peer_certificate_names(SSL* ssl, std::string_view node_id) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  return cert && SSL_get_verify_result(ssl) == X509_V_OK && names(cert, node_id);
}

std::optional<std::array<std::uint8_t, 32>> export_tiebreak(SSL* ssl) {
  std::array<std::uint8_t, 32> out{};
  if (SSL_export_keying_material(ssl, out.data(), out.size(), tiebreak_label,
                                 std::strlen(tiebreak_label), nullptr, 0, 0) != 1)
    return std::nullopt;
  return out;
}

tls_failure classify_tls_failure(SSL* ssl, const tls_session& session,
                                 const std::string& error_message) {
  if (session.unknown_key)
    return {handshake_failure::unknown_key, "the peer's key is not in this node's keyring"};
  const long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK)
    return {handshake_failure::certificate,
            std::string("certificate: ") + X509_verify_cert_error_string(verify)};
  return {handshake_failure::tls, "tls: " + error_message};
}

}  // namespace barrel_p2p::detail
