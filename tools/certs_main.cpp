// barrel-p2p-certs: a throwaway CA and one certificate per node, for trying
// certificate mode (--tls cert) on a test cluster. Production clusters
// issue certificates from their own PKI; see docs/concepts/security.md.
//
//   barrel-p2p-certs --out DIR --nodes a,b,c [--days N]
//
// Writes DIR/ca.pem and, for each node, DIR/<id>.pem and DIR/<id>.key
// (mode 0600). The CA's private key is not kept: issuing more certificates
// later means running it again for every node.
#include "cli.hpp"
#include "dev_certs.hpp"

#include <iostream>

int main(int argc, char** argv) {
  using namespace barrel_p2p;
  std::filesystem::path out;
  std::vector<std::string> nodes;
  int days = 365;
  try {
    cli::flag_reader flags(argc, argv);
    while (flags.next()) {
      const auto& f = flags.flag();
      if (f == "--out") out = flags.value();
      else if (f == "--nodes") nodes = cli::parse_list<std::string>(flags.value());
      else if (f == "--days") days = std::stoi(flags.value());
      else if (f == "--help" || f == "-h") {
        std::cout << "usage: barrel-p2p-certs --out DIR --nodes a,b,c [--days N]\n";
        return 0;
      } else throw std::invalid_argument("unknown flag " + f);
    }
    if (out.empty() || nodes.empty()) throw std::invalid_argument("--out and --nodes are required");
    if (days <= 0) throw std::invalid_argument("--days must be positive");
  } catch (const std::exception& e) {
    std::cerr << "barrel-p2p-certs: " << e.what() << "\n";
    return 2;
  }
  try {
    dev_certs::authority ca("barrel_p2p dev CA", days);
    for (const auto& id : nodes) {
      const auto files = ca.issue(id, out, id, std::chrono::seconds(-60), std::chrono::hours(24) * days);
      std::cout << id << ": " << files.certificate.string() << " " << files.private_key.string() << "\n";
    }
    std::cout << "ca: " << (out / "ca.pem").string() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "barrel-p2p-certs: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
