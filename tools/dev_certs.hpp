// A throwaway certificate authority for trying certificate mode: a CA and
// one certificate per node id (EC P-256, SHA-256, the id as a DNS
// subjectAltName), written as PEM files. Used by the tests, the benchmark
// and `barrel-p2p-certs`. Production clusters use their own PKI.
#pragma once

#include <barrel_p2p/tcp_transport.hpp>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

namespace barrel_p2p::dev_certs {

class authority {
 public:
  /// A new CA named `name`, valid from now for `days`. Throws std::runtime_error.
  explicit authority(const std::string& name = "barrel_p2p dev CA", int days = 365);
  ~authority();
  authority(const authority&) = delete;
  authority& operator=(const authority&) = delete;

  /// Writes the CA certificate to `path`.
  void write_ca(const std::filesystem::path& path) const;
  /// Issues a certificate naming `node_id` (subjectAltName DNS), valid from
  /// now + `not_before` for `valid_for`, and writes it and its key into
  /// `dir` as <file_stem>.pem and <file_stem>.key (mode 0600). Returns
  /// the tls_files for that node, with `ca` = dir/ca.pem (written too).
  tls_files issue(const std::string& node_id, const std::filesystem::path& dir,
                  const std::string& file_stem,
                  std::chrono::seconds not_before = std::chrono::seconds(-60),
                  std::chrono::seconds valid_for = std::chrono::hours(24 * 365)) const;
  tls_files issue(const std::string& node_id, const std::filesystem::path& dir) const {
    return issue(node_id, dir, node_id);
  }

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace barrel_p2p::dev_certs
