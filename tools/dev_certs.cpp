#include "dev_certs.hpp"

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <functional>
#include <stdexcept>
#include <sys/stat.h>

namespace barrel_p2p::dev_certs {
namespace {

struct key_deleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct cert_deleter {
  void operator()(X509* c) const { X509_free(c); }
};
using key_ptr = std::unique_ptr<EVP_PKEY, key_deleter>;
using cert_ptr = std::unique_ptr<X509, cert_deleter>;

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("dev_certs: ") + what + " failed");
}

key_ptr new_key() {
  key_ptr k(EVP_EC_gen("P-256"));
  check(k != nullptr, "EC key generation");
  return k;
}

void set_name(X509_NAME* name, const std::string& cn) {
  check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) == 1,
        "setting the name");
}

void add_extension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  check(ext != nullptr, "making an extension");
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  check(ok == 1, "adding an extension");
}

cert_ptr new_cert(EVP_PKEY* key, const std::string& cn, long not_before_s, long valid_for_s) {
  cert_ptr c(X509_new());
  check(c != nullptr, "X509_new");
  X509_set_version(c.get(), 2);
  std::uint64_t serial = 0;
  check(RAND_bytes(reinterpret_cast<unsigned char*>(&serial), sizeof serial) == 1, "serial");
  ASN1_INTEGER_set_uint64(X509_get_serialNumber(c.get()), serial >> 1);
  X509_gmtime_adj(X509_getm_notBefore(c.get()), not_before_s);
  X509_gmtime_adj(X509_getm_notAfter(c.get()), not_before_s + valid_for_s);
  check(X509_set_pubkey(c.get(), key) == 1, "setting the public key");
  set_name(X509_get_subject_name(c.get()), cn);
  return c;
}

void write_pem(const std::filesystem::path& path, const std::function<int(FILE*)>& write, bool secret) {
  FILE* f = std::fopen(path.c_str(), "w");
  check(f != nullptr, ("opening " + path.string()).c_str());
  if (secret) ::chmod(path.c_str(), 0600);
  const int ok = write(f);
  std::fclose(f);
  check(ok == 1, ("writing " + path.string()).c_str());
}

}  // namespace

struct authority::impl {
  key_ptr key;
  cert_ptr cert;
};

authority::authority(const std::string& name, int days) : impl_(std::make_unique<impl>()) {
  impl_->key = new_key();
  impl_->cert = new_cert(impl_->key.get(), name, -60, static_cast<long>(days) * 86400);
  X509* c = impl_->cert.get();
  check(X509_set_issuer_name(c, X509_get_subject_name(c)) == 1, "setting the issuer");
  add_extension(c, c, NID_basic_constraints, "critical,CA:TRUE");
  add_extension(c, c, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_extension(c, c, NID_subject_key_identifier, "hash");
  check(X509_sign(c, impl_->key.get(), EVP_sha256()) > 0, "signing the CA");
}

authority::~authority() = default;

void authority::write_ca(const std::filesystem::path& path) const {
  write_pem(path, [&](FILE* f) { return PEM_write_X509(f, impl_->cert.get()); }, false);
}

tls_files authority::issue(const std::string& node_id, const std::filesystem::path& dir,
                           const std::string& file_stem, std::chrono::seconds not_before,
                           std::chrono::seconds valid_for) const {
  std::filesystem::create_directories(dir);
  auto key = new_key();
  auto cert = new_cert(key.get(), node_id, static_cast<long>(not_before.count()),
                       static_cast<long>(valid_for.count()));
  X509* c = cert.get();
  check(X509_set_issuer_name(c, X509_get_subject_name(impl_->cert.get())) == 1, "setting the issuer");
  add_extension(c, impl_->cert.get(), NID_basic_constraints, "critical,CA:FALSE");
  add_extension(c, impl_->cert.get(), NID_key_usage, "critical,digitalSignature");
  add_extension(c, impl_->cert.get(), NID_ext_key_usage, "serverAuth,clientAuth");
  add_extension(c, impl_->cert.get(), NID_subject_alt_name, "DNS:" + node_id);
  check(X509_sign(c, impl_->key.get(), EVP_sha256()) > 0, "signing a certificate");

  tls_files files;
  files.ca = dir / "ca.pem";
  files.certificate = dir / (file_stem + ".pem");
  files.private_key = dir / (file_stem + ".key");
  write_ca(files.ca);
  write_pem(files.certificate, [&](FILE* f) { return PEM_write_X509(f, c); }, false);
  write_pem(files.private_key, [&](FILE* f) {
    return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  }, true);
  return files;
}

}  // namespace barrel_p2p::dev_certs
