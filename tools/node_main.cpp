// barrel-p2p-node: one node as a daemon, with the HTTP admin surface.
//
// Configured by flags and/or a JSON file (flags win); see
// docs/reference/daemon.md. SIGINT/SIGTERM: stop serving HTTP, close (and
// flush) the maps, leave the cluster, exit 0. A second signal exits at once.
// SIGHUP: re-read the secret file (psk) or the certificate files (cert) for
// new connections: key rotation without a restart.

#include <barrel_p2p/http_api.hpp>
#include <barrel_p2p/members.hpp>
#include <barrel_p2p/placement.hpp>
#include <barrel_p2p/queries.hpp>
#include <barrel_p2p/registry.hpp>
#include <barrel_p2p/reminders.hpp>
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/node.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "cli.hpp"

#include <charconv>
#include <csignal>
#include <chrono>
#include <ctime>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <sys/stat.h>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

struct map_spec {
  std::string name;
  map_options options;
};

struct service_spec {
  std::string service, endpoint;
};

struct group_spec {
  std::string group;
  std::uint32_t shards = 64;
};

struct daemon_config {
  node_config node;
  std::vector<map_spec> maps;
  std::vector<service_spec> services;  // registered at start
  std::vector<group_spec> groups;      // placement groups joined
  bool reminders = false;
  member_tags tags;                    // this node's tags in the member directory
  bool http_enabled = true;
  http_api_config http;
  std::string secret_file;            // re-read on SIGHUP (psk mode)
  std::vector<std::string> warnings;  // logged once the logger runs
};

class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Every line, the library's too, goes through the library's default sink:
// a UTC timestamp, then "<node id> <component>: ...".
const log_sink sink = stderr_log_sink();
std::string daemon_id = "-";  // the node id once the configuration is read

void say(const std::string& message) { sink(log_line(daemon_id, "daemon", message)); }

std::string read_file_trimmed(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) throw config_error(std::string("cannot read the ") + what + " file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  if (s.empty()) throw config_error(std::string("the ") + what + " file " + path + " is empty");
  return s;
}

// A secret, token or key readable by group or others deserves a warning.
std::optional<std::string> loose_mode_warning(const std::string& path, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0)
    return std::string("WARNING: the ") + what + " file " + path + " is readable by group or others (chmod 600 it)";
  return std::nullopt;
}
void check_file_mode(daemon_config& c, const std::string& path, const char* what) {
  if (auto w = loose_mode_warning(path, what)) c.warnings.push_back(std::move(*w));
}

// The keyring file: the first non-empty line is the primary secret (dialled
// with), the others are accepted too (rotation); '#' starts a comment line.
struct keyring_file {
  std::string primary;
  std::vector<std::string> accepted;
};
keyring_file read_keyring(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw config_error("cannot read the secret file " + path);
  keyring_file k;
  std::string line;
  while (std::getline(in, line)) {
    // Surrounding blanks are not part of a key (an indented line or a
    // trailing CR from another editor must not make a different key).
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos) continue;
    line = line.substr(first, line.find_last_not_of(" \t\r") - first + 1);
    if (line.front() == '#') continue;
    if (k.primary.empty()) k.primary = line;
    else k.accepted.push_back(line);
  }
  if (k.primary.empty()) throw config_error("the secret file " + path + " holds no secret");
  return k;
}

void use_secret_file(daemon_config& c, const std::string& path) {
  auto k = read_keyring(path);
  c.node.transport.cluster_secret = std::move(k.primary);
  c.node.transport.accepted_secrets = std::move(k.accepted);
  c.secret_file = path;
  check_file_mode(c, path, "secret");
}

void use_inline_secret(daemon_config& c, std::string secret, const std::string& where) {
  c.node.transport.cluster_secret = std::move(secret);
  c.node.transport.accepted_secrets.clear();
  c.secret_file.clear();
  c.warnings.push_back("WARNING: the cluster secret is given " + where +
                       ", where other users may read it (process list, shell history); use a secret file");
}

transport_security parse_tls_mode(const std::string& v, const std::string& where) {
  if (v == "psk") return transport_security::psk;
  if (v == "cert") return transport_security::certificates;
  if (v == "insecure-plaintext") return transport_security::insecure_plaintext;
  throw config_error(where + ": expected psk, cert or insecure-plaintext, got '" + v + "'");
}

// "host:port"; "[v6]:port" for IPv6.
peer_address parse_address(const std::string& text, const char* what) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) throw config_error(std::string(what) + ": expected HOST:PORT, got '" + text + "'");
  auto host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  auto p = text.substr(colon + 1);
  auto r = std::from_chars(p.data(), p.data() + p.size(), port);
  if (r.ec != std::errc{} || r.ptr != p.data() + p.size() || port > 65535)
    throw config_error(std::string(what) + ": bad port in '" + text + "'");
  return {host, static_cast<std::uint16_t>(port)};
}

// --map kv  |  --map kv,persist,prune
map_spec parse_map_flag(const std::string& text) {
  std::stringstream ss(text);
  std::string part;
  map_spec spec;
  std::getline(ss, spec.name, ',');
  while (std::getline(ss, part, ',')) {
    if (part == "persist") spec.options.persist = true;
    else if (part == "prune") spec.options.prune_on_peer_down = true;
    else throw config_error("--map " + text + ": unknown option '" + part + "' (persist, prune)");
  }
  return spec;
}

// Reads one key of a JSON object with the right type, or fails naming it.
template <class T>
T get(const json& obj, const char* key, const std::string& where) {
  try {
    return obj.at(key).get<T>();
  } catch (const json::exception&) {
    throw config_error(where + ": '" + key + "' has the wrong type");
  }
}

void check_keys(const json& obj, std::initializer_list<const char*> allowed, const std::string& where) {
  if (!obj.is_object()) throw config_error(where + " must be an object");
  for (const auto& [k, v] : obj.items()) {
    bool ok = false;
    for (const char* a : allowed) ok |= k == a;
    if (!ok) throw config_error(where + ": unknown key '" + k + "'");  // a typo must not pass silently
  }
}

duration ms_of(const json& obj, const char* key, const std::string& where) {
  const auto v = get<std::int64_t>(obj, key, where);
  if (v <= 0) throw config_error(where + ": '" + key + "' must be positive");
  return duration{v};
}

clock_skew_policy parse_skew_policy(const std::string& v, const std::string& where) {
  if (auto p = clock_skew_policy_from_string(v)) return *p;
  throw config_error(where + ": expected refuse or warn, got '" + v + "'");
}

void apply_file(daemon_config& c, const std::string& path) {
  std::ifstream in(path);
  if (!in) throw config_error("cannot read the config file " + path);
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded()) throw config_error(path + " is not valid JSON");
  check_keys(j,
             {"id", "listen", "advertise", "contacts", "secret", "secret_file", "tls", "tls_ca", "tls_cert",
              "tls_key", "data_dir", "maps", "http", "membership", "anti_entropy_interval_ms",
              "heartbeat_interval_ms", "heartbeat_timeout_ms", "max_clock_offset_ms", "clock_skew_policy",
              "clock_probe_interval_ms"},
             path);
  auto& t = c.node.transport;
  if (j.contains("id")) t.node_id = get<std::string>(j, "id", path);
  if (j.contains("listen")) {
    auto a = parse_address(get<std::string>(j, "listen", path), "listen");
    t.listen_host = a.host;
    t.listen_port = a.port;
  }
  if (j.contains("advertise")) t.advertise_host = get<std::string>(j, "advertise", path);
  if (j.contains("contacts"))
    for (const auto& s : get<std::vector<std::string>>(j, "contacts", path))
      c.node.contacts.push_back(parse_address(s, "contacts"));
  if (j.contains("secret") && j.contains("secret_file"))
    throw config_error(path + ": give one of 'secret' and 'secret_file', not both");
  if (j.contains("secret")) use_inline_secret(c, get<std::string>(j, "secret", path), "inline in " + path);
  if (j.contains("secret_file")) use_secret_file(c, get<std::string>(j, "secret_file", path));
  if (j.contains("tls")) t.security = parse_tls_mode(get<std::string>(j, "tls", path), path + ": tls");
  if (j.contains("tls_ca")) t.certificates.ca = get<std::string>(j, "tls_ca", path);
  if (j.contains("tls_cert")) t.certificates.certificate = get<std::string>(j, "tls_cert", path);
  if (j.contains("tls_key")) t.certificates.private_key = get<std::string>(j, "tls_key", path);
  if (j.contains("data_dir")) c.node.data_dir = get<std::string>(j, "data_dir", path);
  if (j.contains("heartbeat_interval_ms")) {
    // As with --heartbeat-ms: the timeout follows at 5x unless given.
    t.heartbeat_interval = ms_of(j, "heartbeat_interval_ms", path);
    t.heartbeat_timeout = 5 * t.heartbeat_interval;
  }
  if (j.contains("heartbeat_timeout_ms")) t.heartbeat_timeout = ms_of(j, "heartbeat_timeout_ms", path);
  if (j.contains("anti_entropy_interval_ms"))
    c.node.replicas.anti_entropy_interval = ms_of(j, "anti_entropy_interval_ms", path);
  if (j.contains("max_clock_offset_ms")) c.node.max_clock_offset = ms_of(j, "max_clock_offset_ms", path);
  if (j.contains("clock_probe_interval_ms"))
    c.node.clocks.probe_interval = ms_of(j, "clock_probe_interval_ms", path);
  if (j.contains("clock_skew_policy"))
    c.node.clocks.policy = parse_skew_policy(get<std::string>(j, "clock_skew_policy", path), path + ": clock_skew_policy");
  if (j.contains("maps")) {
    if (!j["maps"].is_array()) throw config_error(path + ": 'maps' must be an array");
    for (const auto& m : j["maps"]) {
      const auto where = path + ": maps[]";
      check_keys(m, {"name", "persist", "prune_on_peer_down", "tombstone_ttl_ms"}, where);
      map_spec spec;
      spec.name = get<std::string>(m, "name", where);
      if (m.contains("persist")) spec.options.persist = get<bool>(m, "persist", where);
      if (m.contains("prune_on_peer_down")) spec.options.prune_on_peer_down = get<bool>(m, "prune_on_peer_down", where);
      if (m.contains("tombstone_ttl_ms")) spec.options.tombstone_ttl = ms_of(m, "tombstone_ttl_ms", where);
      c.maps.push_back(std::move(spec));
    }
  }
  if (j.contains("http")) {
    const auto& h = j["http"];
    const auto where = path + ": http";
    if (h.is_string() && h == "off") {
      c.http_enabled = false;
    } else {
      check_keys(h, {"listen", "token", "token_file", "max_body_bytes", "max_connections", "allowed_hosts"}, where);
      if (h.contains("allowed_hosts")) c.http.allowed_hosts = get<std::vector<std::string>>(h, "allowed_hosts", where);
      if (h.contains("listen")) {
        auto a = parse_address(get<std::string>(h, "listen", where), "http.listen");
        c.http.listen_host = a.host;
        c.http.listen_port = a.port;
      }
      if (h.contains("token")) {
        c.http.bearer_token = get<std::string>(h, "token", where);
        c.warnings.push_back("WARNING: the HTTP token is given inline in " + path + "; use a token file");
      }
      if (h.contains("token_file")) {
        const auto file = get<std::string>(h, "token_file", where);
        c.http.bearer_token = read_file_trimmed(file, "token");
        check_file_mode(c, file, "token");
      }
      if (h.contains("max_body_bytes")) c.http.max_body_bytes = get<std::size_t>(h, "max_body_bytes", where);
      if (h.contains("max_connections")) c.http.max_connections = get<std::size_t>(h, "max_connections", where);
    }
  }
  if (j.contains("membership")) {
    const auto& m = j["membership"];
    const auto where = path + ": membership";
    check_keys(m, {"active_size", "passive_size", "shuffle_interval_ms", "maintenance_interval_ms"}, where);
    if (m.contains("active_size")) c.node.membership.active_size = get<std::size_t>(m, "active_size", where);
    if (m.contains("passive_size")) c.node.membership.passive_size = get<std::size_t>(m, "passive_size", where);
    if (m.contains("shuffle_interval_ms")) c.node.membership.shuffle_interval = ms_of(m, "shuffle_interval_ms", where);
    if (m.contains("maintenance_interval_ms"))
      c.node.membership.maintenance_interval = ms_of(m, "maintenance_interval_ms", where);
  }
}

constexpr const char* usage =
    "usage: barrel-p2p-node --id NAME [options]\n"
    "  --config FILE          JSON config (docs/reference/daemon.md); flags given after override it\n"
    "  --listen HOST:PORT     cluster address (default 127.0.0.1:7946)\n"
    "  --advertise HOST       address peers should dial, if not the listen host\n"
    "  --contact HOST:PORT    a node to join through (repeatable)\n"
    "  --secret-file F        the cluster keyring: first line the secret dialled with,\n"
    "                         more lines accepted too (rotation); re-read on SIGHUP\n"
    "  --secret S             the cluster secret inline (discouraged: visible to other users)\n"
    "  --tls psk|cert|insecure-plaintext   how connections are secured (default psk)\n"
    "  --tls-ca F --tls-cert F --tls-key F   PEM files for --tls cert (re-read on SIGHUP)\n"
    "  --data-dir DIR         where persisted maps live\n"
    "  --map NAME[,persist][,prune]   a map to open and serve (repeatable)\n"
    "  --tag KEY=VALUE        a tag of this node in the member directory (repeatable)\n"
    "  --register SERVICE=ENDPOINT    register this node as a provider (repeatable)\n"
    "  --shards GROUP[:N]     join placement group GROUP of N shards (default 64; repeatable)\n"
    "  --reminders            fire durable reminders here (needs --data-dir); fired ones are\n"
    "                         logged and completed\n"
    "  --http HOST:PORT|off   HTTP admin address (default 127.0.0.1:8946)\n"
    "  --http-token T | --http-token-file F   require 'Authorization: Bearer T'\n"
    "  --http-allowed-host NAME   a Host/Origin name accepted without a token (repeatable)\n"
    "  --anti-entropy-ms N    mean anti-entropy interval (default 5000)\n"
    "  --heartbeat-ms N       heartbeat interval (timeout: 5x)\n"
    "  --max-clock-offset-ms N   peer timestamps further ahead are refused (default 60000)\n"
    "  --clock-skew-policy refuse|warn   when this clock is that far ahead of the cluster:\n"
    "                         refuse local writes (default) or only warn\n"
    "  --clock-probe-ms N     how often each peer's clock offset is measured (default 2000)\n";

daemon_config parse(int argc, char** argv) {
  daemon_config c;
  c.node.transport.listen_port = 7946;
  c.http.listen_port = 8946;
  c.node.log = sink;
  cli::flag_reader args(argc, argv);
  auto value = [&] { return args.value(); };
  while (args.next()) {
    const auto& a = args.flag();
    auto positive = [&](const std::string& text) {
      long long v = 0;
      auto r = std::from_chars(text.data(), text.data() + text.size(), v);
      if (r.ec != std::errc{} || r.ptr != text.data() + text.size() || v <= 0)
        throw config_error(a + ": expected a positive integer, got '" + text + "'");
      return duration{v};
    };
    if (a == "--help" || a == "-h") {
      std::cout << usage;
      std::exit(0);
    } else if (a == "--config") {
      apply_file(c, value());
    } else if (a == "--id") {
      c.node.transport.node_id = value();
    } else if (a == "--listen") {
      auto ad = parse_address(value(), "--listen");
      c.node.transport.listen_host = ad.host;
      c.node.transport.listen_port = ad.port;
    } else if (a == "--advertise") {
      c.node.transport.advertise_host = value();
    } else if (a == "--contact") {
      c.node.contacts.push_back(parse_address(value(), "--contact"));
    } else if (a == "--secret") {
      use_inline_secret(c, value(), "on the command line");
    } else if (a == "--secret-file") {
      use_secret_file(c, value());
    } else if (a == "--tls") {
      c.node.transport.security = parse_tls_mode(value(), "--tls");
    } else if (a == "--tls-ca") {
      c.node.transport.certificates.ca = value();
    } else if (a == "--tls-cert") {
      c.node.transport.certificates.certificate = value();
    } else if (a == "--tls-key") {
      c.node.transport.certificates.private_key = value();
    } else if (a == "--data-dir") {
      c.node.data_dir = value();
    } else if (a == "--map") {
      c.maps.push_back(parse_map_flag(value()));
    } else if (a == "--tag") {
      const auto v = value();
      const auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0) throw config_error("--tag: expected KEY=VALUE, got '" + v + "'");
      c.tags[v.substr(0, eq)] = v.substr(eq + 1);
      if (!valid_member_tags(c.tags))
        throw config_error("--tag: at most 32 tags, keys of 1-64 bytes, values of at most 256, 4 KiB in all");
    } else if (a == "--register") {
      const auto v = value();
      const auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == v.size() || eq > registry::max_service_bytes ||
          v.size() - eq - 1 > registry::max_endpoint_bytes || v.find('\n') != std::string::npos)
        throw config_error("--register: expected SERVICE=ENDPOINT (at most 200 and 512 bytes), got '" + v + "'");
      c.services.push_back({v.substr(0, eq), v.substr(eq + 1)});
    } else if (a == "--shards") {
      const auto v = value();
      const auto colon = v.rfind(':');
      group_spec g{v.substr(0, colon), 64};
      if (g.group.empty() || g.group.size() > 100 || g.group.find('\n') != std::string::npos)
        throw config_error("--shards: the group name must be 1-100 bytes, got '" + v + "'");
      if (colon != std::string::npos) {
        const auto n = v.substr(colon + 1);
        unsigned long shards = 0;
        auto r = std::from_chars(n.data(), n.data() + n.size(), shards);
        if (r.ec != std::errc{} || r.ptr != n.data() + n.size() || shards == 0 || shards > 65'536)
          throw config_error("--shards: expected GROUP[:N] with N from 1 to 65536, got '" + v + "'");
        g.shards = static_cast<std::uint32_t>(shards);
      }
      c.groups.push_back(std::move(g));
    } else if (a == "--reminders") {
      c.reminders = true;
    } else if (a == "--http") {
      auto v = value();
      if (v == "off") {
        c.http_enabled = false;
      } else {
        auto ad = parse_address(v, "--http");
        c.http_enabled = true;
        c.http.listen_host = ad.host;
        c.http.listen_port = ad.port;
      }
    } else if (a == "--http-token") {
      c.http.bearer_token = value();
      c.warnings.push_back("WARNING: the HTTP token is given on the command line; use --http-token-file");
    } else if (a == "--http-token-file") {
      const auto file = value();
      c.http.bearer_token = read_file_trimmed(file, "token");
      check_file_mode(c, file, "token");
    } else if (a == "--http-allowed-host") {
      c.http.allowed_hosts.push_back(value());
    } else if (a == "--anti-entropy-ms") {
      c.node.replicas.anti_entropy_interval = positive(value());
    } else if (a == "--max-clock-offset-ms") {
      c.node.max_clock_offset = positive(value());
    } else if (a == "--clock-skew-policy") {
      c.node.clocks.policy = parse_skew_policy(value(), "--clock-skew-policy");
    } else if (a == "--clock-probe-ms") {
      c.node.clocks.probe_interval = positive(value());
    } else if (a == "--heartbeat-ms") {
      c.node.transport.heartbeat_interval = positive(value());
      c.node.transport.heartbeat_timeout = 5 * c.node.transport.heartbeat_interval;
    } else {
      throw config_error("unknown flag " + a);
    }
  }
  if (c.node.transport.node_id.empty()) throw config_error("--id is required");
  auto& t = c.node.transport;
  switch (t.security) {
    case transport_security::psk:
      if (t.cluster_secret.empty()) throw config_error("a cluster secret is required (--secret-file or --secret)");
      if (t.cluster_secret.size() < min_secret_bytes)
        throw config_error("the cluster secret is " + std::to_string(t.cluster_secret.size()) +
                           " bytes; at least " + std::to_string(min_secret_bytes) +
                           " are required (e.g. head -c 32 /dev/urandom | base64 > cluster.secret)");
      for (const auto& s : t.accepted_secrets)
        if (s.size() < min_secret_bytes)
          throw config_error("an accepted secret in " + c.secret_file + " is shorter than " +
                             std::to_string(min_secret_bytes) + " bytes");
      break;
    case transport_security::certificates:
      if (t.certificates.ca.empty() || t.certificates.certificate.empty() || t.certificates.private_key.empty())
        throw config_error("--tls cert needs --tls-ca, --tls-cert and --tls-key");
      check_file_mode(c, t.certificates.private_key.string(), "private key");
      break;
    case transport_security::insecure_plaintext:
      c.warnings.push_back("WARNING: --tls insecure-plaintext: no encryption, no authentication; "
                           "anyone who reaches the cluster port joins. For tests only.");
      break;
  }
  const auto& hh = c.http.listen_host;
  if (c.http_enabled && c.http.bearer_token.empty() && hh != "127.0.0.1" && hh != "localhost" && hh != "::1")
    c.warnings.push_back("WARNING: the HTTP API listens on " + hh +
                         " without a bearer token: anyone who reaches it can read and write every served map "
                         "(use --http-token-file)");
  if (c.reminders && c.node.data_dir.empty()) throw config_error("--reminders keeps them on disk: give --data-dir");
  for (const auto& m : c.maps)
    if (m.options.persist && c.node.data_dir.empty())
      throw config_error("map " + m.name + " is persisted: give --data-dir");
  return c;
}

// Holds what the daemon runs, so shutdown can reach it.
struct daemon_state {
  std::unique_ptr<node> n;
  std::vector<std::shared_ptr<map>> maps;
  std::shared_ptr<registry> services;
  std::shared_ptr<members> directory;
  std::shared_ptr<queries> questions;
  std::vector<std::shared_ptr<placement>> groups;
  std::shared_ptr<reminders> timers;
  std::unique_ptr<http_api> http;
  bool stopping = false;
  int exit_code = 0;
};

// Logs each reminder fired here and completes it.
task<> log_reminders(std::shared_ptr<reminders> r, event_stream<fired_reminder> fired) {
  while (auto f = co_await fired.next()) {
    say("reminder '" + f->name + "' fired (shard " + std::to_string(f->shard) + ", fence " +
        std::to_string(f->fence) + ", attempt " + std::to_string(f->attempt) +
        "): " + f->payload.dump(-1, ' ', false, json::error_handler_t::replace));
    std::string failure;
    try {
      co_await r->complete(*f);
    } catch (const std::exception& e) {
      failure = e.what();  // not completed: it fires again after redeliver_after
    }
    if (!failure.empty()) say("reminder '" + f->name + "' not completed, it will fire again: " + failure);
  }
}

// Logs this node's shard acquisitions and releases, one line per change.
task<> log_shards(std::shared_ptr<placement> p, event_stream<shard_event> events) {
  while (auto ev = co_await events.next()) {
    std::size_t acquired = 0, released = 0;
    for (;;) {
      (ev->what == shard_event::kind::acquired ? acquired : released)++;
      if (events.pending() == 0) break;
      ev = co_await events.next();
      if (!ev) break;
    }
    say("placement '" + p->group() + "': acquired " + std::to_string(acquired) + ", released " +
        std::to_string(released) + " shard(s); owns " + std::to_string(p->owned_shards().size()) + " of " +
        std::to_string(p->shards()));
  }
}

// The registry's registrations, placement groups and reminders, once the
// node runs.
task<> start_consumers(daemon_state& s, const daemon_config& c) {
  node& n = *s.n;
  s.directory = co_await members::open(n, c.tags);
  if (s.http) co_await s.http->expose(s.directory);
  // Queries: every daemon with HTTP answers barrel_p2p.status (the /ui page
  // and `barrel-p2p query` use it).
  s.questions = co_await queries::open(n);
  if (s.http) co_await s.http->expose(s.questions);
  for (const auto& spec : c.services) {
    co_await s.services->register_service(spec.service, spec.endpoint);
    say("registered as a provider of '" + spec.service + "' at " + spec.endpoint);
  }
  for (const auto& g : c.groups) {
    placement_options o;
    o.shards = g.shards;
    auto p = co_await placement::open(n, g.group, o);
    say("placement '" + g.group + "': joined, owns " + std::to_string(p->owned_shards().size()) + " of " +
        std::to_string(p->shards()) + " shard(s)");
    boost::asio::co_spawn(n.get_executor(), log_shards(p, p->subscribe()), boost::asio::detached);
    if (s.http) co_await s.http->expose(p);
    s.groups.push_back(std::move(p));
  }
  if (c.reminders) {
    s.timers = co_await reminders::open(n);
    boost::asio::co_spawn(n.get_executor(), log_reminders(s.timers, s.timers->subscribe()), boost::asio::detached);
    if (s.http) {
      co_await s.http->expose(s.timers);
      // Who fires what: the reminders' own placement group, under /shards.
      auto firing = co_await placement::open(n, "barrel_p2p.reminders");
      co_await s.http->expose(std::move(firing));
    }
    say("reminders: " + std::to_string(s.timers->list().size()) + " scheduled");
  }
}

task<> run(daemon_state& s, daemon_config c) {
  for (const auto& w : c.warnings) say(w);
  s.n = std::make_unique<node>(co_await boost::asio::this_coro::executor, c.node);
  node& n = *s.n;
  for (auto& spec : c.maps) {
    s.maps.push_back(map::open(n, spec.name, spec.options));
    say("map " + spec.name + " open, " + std::to_string(s.maps.back()->size()) + " keys" +
             (spec.options.persist ? " recovered" : ""));
  }
  s.services = registry::open(n);
  if (c.http_enabled) {
    s.http = std::make_unique<http_api>(n, c.http);
    for (auto& m : s.maps) co_await s.http->expose(m);
    co_await s.http->expose(s.services);
    co_await s.http->start();
  }
  const auto joined = co_await n.start();
  if (joined.duplicate_id_at)
    throw config_error("the contact " + joined.duplicate_id_at->to_string() + " answered with this node's id '" +
                       n.id() + "': another node uses it; give each node its own --id");
  for (const auto& contact : joined.not_joined) say("contact " + contact.to_string() + " did not take this node in");
  if (joined.via) say("joined the cluster through " + joined.via->to_string());
  else if (!c.node.contacts.empty()) say("no contact answered yet: still trying them in the background");
  co_await start_consumers(s, c);
  say("listening on " + n.self().address.to_string() + ", http " +
           (s.http ? c.http.listen_host + ":" + std::to_string(s.http->port()) : std::string("off")) +
           ", " + std::to_string(c.node.contacts.size()) + " contact(s)");
}

// SIGHUP: new keys or certificates for the connections made from now on.
// Established connections stay; a file that does not load keeps the old.
task<> reload_security(daemon_state& s, transport_security mode, std::string secret_file) {
  if (s.stopping) co_return;
  if (!s.n) {
    say("SIGHUP: the node is not running yet: nothing reloaded");
    co_return;
  }
  try {
    if (mode == transport_security::psk) {
      if (secret_file.empty()) {
        say("SIGHUP: the secret was not given in a file: nothing to reload");
        co_return;
      }
      if (auto w = loose_mode_warning(secret_file, "secret")) say(*w);
      auto k = read_keyring(secret_file);
      const auto accepted = k.accepted.size();
      co_await s.n->set_cluster_secrets(std::move(k.primary), std::move(k.accepted));
      say("SIGHUP: keyring reloaded from " + secret_file + " (1 primary, " + std::to_string(accepted) +
               " more accepted)");
    } else if (mode == transport_security::certificates) {
      co_await s.n->reload_certificates();
      say("SIGHUP: certificates reloaded");
    } else {
      say("SIGHUP: plaintext mode: nothing to reload");
    }
  } catch (const std::exception& e) {
    say(std::string("SIGHUP: reload failed, keeping the current keys: ") + e.what());
  }
}

task<> shutdown(daemon_state& s, boost::asio::io_context& io) {
  say("shutting down: leaving the cluster, flushing maps");
  if (s.http) co_await s.http->stop();
  if (s.n) co_await s.n->stop();  // closes (and flushes) the maps, then leaves
  say("stopped");
  io.stop();
}

}  // namespace

int main(int argc, char** argv) {
  // A SIGHUP before the handler below is installed must not kill the daemon.
  std::signal(SIGHUP, SIG_IGN);
  daemon_config config;
  try {
    config = parse(argc, argv);
    daemon_id = config.node.transport.node_id;
  } catch (const std::exception& e) {
    std::cerr << "barrel-p2p-node: " << e.what() << "\n" << usage;
    return 2;
  }
  boost::asio::io_context io;
  daemon_state state;
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  std::function<void(const boost::system::error_code&, int)> on_signal = [&](const boost::system::error_code& ec,
                                                                               int sig) {
    if (ec) return;
    if (state.stopping) {
      say("second signal: exiting now");
      std::_Exit(1);
    }
    say(std::string("got ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
    state.stopping = true;
    boost::asio::co_spawn(io, shutdown(state, io), boost::asio::detached);
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);
  boost::asio::signal_set hangups(io, SIGHUP);
  const auto mode = config.node.transport.security;
  const auto secret_file = config.secret_file;
  std::function<void(const boost::system::error_code&, int)> on_hangup = [&](const boost::system::error_code& ec, int) {
    if (ec || state.stopping) return;
    boost::asio::co_spawn(io, reload_security(state, mode, secret_file), boost::asio::detached);
    hangups.async_wait(on_hangup);
  };
  hangups.async_wait(on_hangup);
  boost::asio::co_spawn(io, run(state, std::move(config)), [&](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      say(std::string("cannot start: ") + ex.what());
    }
    state.exit_code = 1;
    io.stop();
  });
  io.run();
  return state.exit_code;
}
