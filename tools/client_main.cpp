// barrel-p2p: the command-line client of a node's HTTP API
// (docs/reference/cli.md). Tables for people by default, the API's JSON
// with --json. Exit codes: 0 done, 1 the node refused (an HTTP error),
// 2 a usage error, 3 the node could not be reached, 4 not found.
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

enum exit_code : int { done = 0, refused = 1, usage_error = 2, unreachable = 3, not_found = 4 };

constexpr const char* usage = R"(usage: barrel-p2p [--addr HOST:PORT] [--token-file F] [--json] COMMAND [ARGS]

  --addr HOST:PORT     the node's HTTP API (default 127.0.0.1:8946, or $BARREL_P2P_ADDR)
  --token-file F       the bearer token (or $BARREL_P2P_TOKEN_FILE)
  --json               print the API's JSON instead of tables

the node and the cluster:
  status                               this node: views, broadcast tree, clock, maps
  members [--tag K=V]...               the member directory, filtered by tags
  members watch                        joins, tag updates and departures, as they happen
  query NAME [PAYLOAD] [--node ID]... [--tag K=V]... [--timeout MS] [--max N]
                                       ask the nodes that handle NAME; prints their answers
maps:
  maps                                 the maps this node serves
  get MAP KEY                          a value (exit 4 when absent)
  put MAP KEY VALUE                    VALUE is JSON; text that is not JSON is stored as a string
  rm MAP KEY
  keys MAP                             every live key, one per line
  watch MAP                            the map's changes, as they happen
services, shards, reminders:
  services [NAME]                      providers of every service, or of NAME
  services watch [NAME]
  register SERVICE ENDPOINT [METADATA] make this node a provider (METADATA: a JSON object)
  deregister SERVICE ENDPOINT
  shards [GROUP]                       placement groups, or the owner of each shard of GROUP
  shards watch GROUP                   this node's acquisitions and releases
  reminders [NAME]                     every reminder, or one
  reminders watch                      reminders fired on this node
  remind NAME (--in MS | --at EPOCH_MS) [--every MS] [--payload JSON]
  unremind NAME

exit codes: 0 done, 1 the node refused the request, 2 usage error,
            3 the node could not be reached, 4 not found
)";

struct usage_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct unreachable_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The node answered with an HTTP error: {"error": code, "detail": ...}.
struct node_failure : std::runtime_error {
  node_failure(unsigned s, const std::string& what) : std::runtime_error(what), status(s) {}
  unsigned status;
};

struct settings {
  std::string host = "127.0.0.1";
  std::string port = "8946";
  std::string token;
  bool json_output = false;
};

std::string read_token(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw usage_failure("cannot read the token file " + path);
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  return token;
}

void set_address(settings& s, const std::string& addr) {
  const auto colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == addr.size())
    throw usage_failure("--addr: expected HOST:PORT, got '" + addr + "'");
  s.host = addr.substr(0, colon);
  if (s.host.size() > 2 && s.host.front() == '[' && s.host.back() == ']') s.host = s.host.substr(1, s.host.size() - 2);
  s.port = addr.substr(colon + 1);
}

// Percent-encodes one path segment (a map name, a key...).
std::string segment(const std::string& raw) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : raw) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == ':') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string show(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }
// Strings bare, anything else as JSON.
std::string text_of(const json& j) { return j.is_string() ? j.get<std::string>() : show(j); }

// ---- talking to the node ----------------------------------------------------------

class client {
 public:
  explicit client(settings s) : s_(std::move(s)) {}
  const settings& config() const { return s_; }

  // One request; the body of a 2xx answer as JSON. Errors throw.
  json call(http::verb method, const std::string& target, const std::string& body = {}) {
    asio::io_context io;
    beast::tcp_stream stream(io);
    connect(io, stream);
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, s_.host);
    req.set(http::field::user_agent, "barrel-p2p");
    if (!s_.token.empty()) req.set(http::field::authorization, "Bearer " + s_.token);
    if (!body.empty() || method == http::verb::put || method == http::verb::post) {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
      req.prepare_payload();
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(256 * 1024 * 1024);
    boost::system::error_code ec;
    // Queries wait as long as they asked for; give every request that and more.
    stream.expires_after(std::chrono::minutes(10));
    http::write(stream, req, ec);
    if (!ec) http::read(stream, buffer, parser, ec);
    if (ec) throw unreachable_failure("no answer from " + where() + ": " + ec.message());
    const auto& res = parser.get();
    json answer = json::parse(res.body(), nullptr, false);
    const auto status = res.result_int();
    if (status >= 300) {
      std::string what = std::to_string(status);
      if (answer.is_object() && answer.contains("error"))
        what += " " + text_of(answer["error"]) + ": " + answer.value("detail", std::string());
      else
        what += " " + std::string(res.reason());
      throw node_failure(status, what);
    }
    if (answer.is_discarded()) throw node_failure(status, "the node's answer is not JSON");
    return answer;
  }

  // Reads the WebSocket at `target`, handing each text message to `each`,
  // until the server closes it (or the process is interrupted).
  void stream(const std::string& target, const std::function<void(const std::string&)>& each) {
    asio::io_context io;
    beast::tcp_stream tcp_stream(io);
    connect(io, tcp_stream);
    tcp_stream.expires_never();
    websocket::stream<beast::tcp_stream> ws(std::move(tcp_stream));
    ws.set_option(websocket::stream_base::decorator([this](websocket::request_type& req) {
      req.set(http::field::user_agent, "barrel-p2p");
      if (!s_.token.empty()) req.set(http::field::authorization, "Bearer " + s_.token);
    }));
    websocket::response_type res;
    boost::system::error_code ec;
    ws.handshake(res, s_.host, target, ec);
    if (ec) {
      if (res.result_int() >= 300) {
        json answer = json::parse(res.body(), nullptr, false);
        std::string what = std::to_string(res.result_int());
        if (answer.is_object() && answer.contains("error"))
          what += " " + text_of(answer["error"]) + ": " + answer.value("detail", std::string());
        throw node_failure(res.result_int(), what);
      }
      throw unreachable_failure("no WebSocket at " + where() + target + ": " + ec.message());
    }
    beast::flat_buffer buffer;
    for (;;) {
      ws.read(buffer, ec);
      if (ec == websocket::error::closed) return;
      if (ec) throw unreachable_failure("the stream from " + where() + " ended: " + ec.message());
      each(beast::buffers_to_string(buffer.data()));
      buffer.consume(buffer.size());
    }
  }

 private:
  std::string where() const { return s_.host + ":" + s_.port; }

  void connect(asio::io_context& io, beast::tcp_stream& stream) {
    tcp::resolver resolver(io);
    boost::system::error_code ec;
    const auto found = resolver.resolve(s_.host, s_.port, ec);
    if (ec) throw unreachable_failure("cannot resolve " + where() + ": " + ec.message());
    stream.expires_after(std::chrono::seconds(10));
    stream.connect(found, ec);
    if (ec) throw unreachable_failure("cannot connect to " + where() + ": " + ec.message());
  }

  settings s_;
};

// ---- printing ---------------------------------------------------------------------

// Columns padded to their widest cell; the last column is not padded.
void print_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(head.size());
  for (std::size_t c = 0; c < head.size(); ++c) width[c] = head[c].size();
  for (const auto& r : rows)
    for (std::size_t c = 0; c < r.size() && c < width.size(); ++c) width[c] = std::max(width[c], r[c].size());
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (std::size_t c = 0; c < cells.size(); ++c) {
      out += cells[c];
      if (c + 1 < cells.size()) out += std::string(width[c] - cells[c].size() + 2, ' ');
    }
    std::cout << out << "\n";
  };
  line(head);
  for (const auto& r : rows) line(r);
}

std::string joined(const json& list, const char* field = nullptr) {
  std::string out;
  for (const auto& item : list) {
    if (!out.empty()) out += ", ";
    out += field ? text_of(item.value(field, json())) : text_of(item);
  }
  return out.empty() ? "-" : out;
}

std::string tags_text(const json& tags) {
  std::string out;
  for (const auto& [k, v] : tags.items()) {
    if (!out.empty()) out += ",";
    out += k + "=" + text_of(v);
  }
  return out.empty() ? "-" : out;
}

// ---- commands ---------------------------------------------------------------------

struct args {
  std::vector<std::string> words;  // positional, after the command
  std::multimap<std::string, std::string> flags;

  [[nodiscard]] const std::string& at(std::size_t i, const char* what) const {
    if (i >= words.size()) throw usage_failure(std::string("missing ") + what);
    if (words[i].empty()) throw usage_failure(std::string(what) + " is empty");
    return words[i];
  }
  void at_most(std::size_t n) const {
    if (words.size() > n) throw usage_failure("unexpected argument '" + words[n] + "'");
  }
  [[nodiscard]] std::vector<std::string> all(const std::string& flag) const {
    std::vector<std::string> out;
    auto [b, e] = flags.equal_range(flag);
    for (auto it = b; it != e; ++it) out.push_back(it->second);
    return out;
  }
  [[nodiscard]] std::optional<std::string> one(const std::string& flag) const {
    auto v = all(flag);
    if (v.size() > 1) throw usage_failure(flag + " given twice");
    return v.empty() ? std::nullopt : std::optional<std::string>(v[0]);
  }
};

std::uint64_t number(const std::string& flag, const std::string& text) {
  std::uint64_t v = 0;
  const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
  if (r.ec != std::errc{} || r.ptr != text.data() + text.size())
    throw usage_failure(flag + ": expected a non-negative integer, got '" + text + "'");
  return v;
}

std::pair<std::string, std::string> tag(const std::string& text) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0) throw usage_failure("--tag: expected KEY=VALUE, got '" + text + "'");
  // The API's filter is key:value, split at the first colon.
  if (text.substr(0, eq).find(':') != std::string::npos)
    throw usage_failure("--tag: a tag key with ':' cannot be filtered on, got '" + text + "'");
  return {text.substr(0, eq), text.substr(eq + 1)};
}

// JSON when it parses, else the text as a JSON string.
json value_of(const std::string& text) {
  json v = json::parse(text, nullptr, false);
  return v.is_discarded() ? json(text) : v;
}

void print_json(const json& j) { std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n"; }

// Writes print nothing on success, or the node's answer with --json.
int quiet_unless_json(const client& c, const json& answer) {
  if (c.config().json_output) print_json(answer);
  return done;
}

int cmd_status(client& c, const args& a) {
  a.at_most(0);
  const auto s = c.call(http::verb::get, "/status");
  if (c.config().json_output) return print_json(s), done;
  std::cout << "node      " << text_of(s["node"]) << " at " << text_of(s["address"]) << ", up "
            << static_cast<long long>(s.value("uptime_seconds", 0.0)) << " s\n";
  std::cout << "active    " << joined(s["active_view"], "id") << "\n";
  std::cout << "passive   " << joined(s["passive_view"], "id") << "\n";
  std::cout << "eager     " << joined(s["eager_peers"]) << "\n";
  std::cout << "lazy      " << joined(s["lazy_peers"]) << "\n";
  if (s.contains("clock")) {
    const auto& k = s["clock"];
    std::cout << "clock     median peer offset " << k.value("median_offset_seconds", 0.0) << " s"
              << (k.value("refusing_writes", false) ? ", REFUSING WRITES (this clock is ahead of the cluster)" : "")
              << "\n";
  }
  for (const char* f : {"members", "services", "reminders"})
    if (s.contains(f)) std::cout << std::string(f) + std::string(10 - std::string(f).size(), ' ') << show(s[f]) << "\n";
  if (!s["maps"].empty()) {
    std::cout << "\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& m : s["maps"]) rows.push_back({text_of(m["name"]), show(m["size"]), show(m["entries"])});
    print_table({"MAP", "KEYS", "ENTRIES"}, rows);
  }
  return done;
}

std::string tag_query(const args& a) {
  std::string q;
  for (const auto& t : a.all("--tag")) {
    const auto [k, v] = tag(t);
    q += (q.empty() ? "?tag=" : "&tag=") + segment(k) + ":" + segment(v);
  }
  return q;
}

void print_event(const client& c, const std::string& text) {
  if (c.config().json_output) {
    std::cout << text << std::endl;
    return;
  }
  json e = json::parse(text, nullptr, false);
  if (!e.is_object()) {
    std::cout << text << std::endl;
    return;
  }
  std::string line = e.contains("event") ? text_of(e["event"]) : "event";
  for (const auto& [k, v] : e.items())
    if (k != "event") line += " " + k + "=" + text_of(v);
  std::cout << line << std::endl;  // flushed: people pipe it
}

// Prints the events of the WebSocket at `target` until it closes.
void follow(client& c, const std::string& target) {
  c.stream(target, [&](const std::string& t) { print_event(c, t); });
}

int cmd_members(client& c, const args& a) {
  if (!a.words.empty() && a.words[0] == "watch") {
    a.at_most(1);
    follow(c, "/members/events");
    return done;
  }
  a.at_most(0);
  const auto r = c.call(http::verb::get, "/members" + tag_query(a));
  if (c.config().json_output) return print_json(r), done;
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : r["members"]) rows.push_back({text_of(m["id"]), text_of(m["address"]), tags_text(m["tags"])});
  print_table({"ID", "ADDRESS", "TAGS"}, rows);
  return done;
}

// A table cell of at most 100 characters (--json prints whole answers).
std::string clipped(std::string text) {
  if (text.size() <= 100) return text;
  std::size_t cut = 97;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 sequence
  return text.substr(0, cut) + "...";
}

int cmd_query(client& c, const args& a) {
  const auto& name = a.at(0, "the query name");
  a.at_most(2);
  json body = json::object();
  if (a.words.size() > 1) body["payload"] = value_of(a.words[1]);
  if (const auto nodes = a.all("--node"); !nodes.empty()) body["nodes"] = nodes;
  json tags = json::object();
  for (const auto& t : a.all("--tag")) {
    const auto [k, v] = tag(t);
    tags[k] = v;
  }
  if (!tags.empty()) body["tags"] = tags;
  if (auto t = a.one("--timeout")) body["timeout_ms"] = number("--timeout", *t);
  if (auto m = a.one("--max")) body["max_answers"] = number("--max", *m);
  const auto r = c.call(http::verb::post, "/query/" + segment(name), body.dump());
  if (c.config().json_output) return print_json(r), done;
  std::vector<std::vector<std::string>> rows;
  for (const auto& ans : r["answers"]) rows.push_back({text_of(ans["node"]), show(ans["ms"]), clipped(show(ans["payload"]))});
  print_table({"NODE", "MS", "ANSWER"}, rows);
  std::cout << rows.size() << (rows.size() == 1 ? " answer\n" : " answers\n");
  return done;
}

int cmd_maps(client& c, const args& a) {
  a.at_most(0);
  const auto r = c.call(http::verb::get, "/maps");
  if (c.config().json_output) return print_json(r), done;
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : r["maps"]) rows.push_back({text_of(m["name"]), show(m["size"])});
  print_table({"MAP", "KEYS"}, rows);
  return done;
}

int cmd_get(client& c, const args& a) {
  const auto& map = a.at(0, "the map name");
  const auto& key = a.at(1, "the key");
  a.at_most(2);
  const auto r = c.call(http::verb::get, "/maps/" + segment(map) + "/" + segment(key));
  if (c.config().json_output) return print_json(r), done;
  std::cout << show(r["value"]) << "\n";
  return done;
}

int cmd_put(client& c, const args& a) {
  const auto& map = a.at(0, "the map name");
  const auto& key = a.at(1, "the key");
  const auto& value = a.at(2, "the value");
  a.at_most(3);
  const auto r = c.call(http::verb::put, "/maps/" + segment(map) + "/" + segment(key), value_of(value).dump());
  return quiet_unless_json(c, r);
}

int cmd_rm(client& c, const args& a) {
  const auto& map = a.at(0, "the map name");
  const auto& key = a.at(1, "the key");
  a.at_most(2);
  const auto r = c.call(http::verb::delete_, "/maps/" + segment(map) + "/" + segment(key));
  return quiet_unless_json(c, r);
}

int cmd_keys(client& c, const args& a) {
  const auto& map = a.at(0, "the map name");
  a.at_most(1);
  json all = json::array();
  std::string after;
  for (;;) {  // page through with ?after= until the listing is complete
    std::string target = "/maps/" + segment(map) + "?limit=10000";
    if (!after.empty()) target += "&after=" + segment(after);
    const auto page = c.call(http::verb::get, target);
    for (const auto& [k, v] : page["entries"].items()) all.push_back(k);
    if (!page.value("truncated", false) || !page.contains("next_after")) break;
    after = page["next_after"].get<std::string>();
  }
  if (c.config().json_output) return print_json(json{{"map", map}, {"keys", all}}), done;
  for (const auto& k : all) std::cout << k.get<std::string>() << "\n";
  return done;
}

int cmd_watch(client& c, const args& a) {
  const auto& map = a.at(0, "the map name");
  a.at_most(1);
  follow(c, "/maps/" + segment(map) + "/events");
  return done;
}

int cmd_services(client& c, const args& a) {
  if (!a.words.empty() && a.words[0] == "watch") {
    a.at_most(2);
    const std::string target = a.words.size() > 1 ? "/services/" + segment(a.words[1]) + "/events" : "/services/events";
    follow(c, target);
    return done;
  }
  a.at_most(1);
  json r = a.words.empty() ? c.call(http::verb::get, "/services")
                           : c.call(http::verb::get, "/services/" + segment(a.words[0]));
  if (c.config().json_output) return print_json(r), done;
  json providers = json::array();
  if (r.contains("services"))
    for (const auto& s : r["services"])
      for (const auto& p : s["providers"]) providers.push_back(p);
  else
    providers = r["providers"];
  std::vector<std::vector<std::string>> rows;
  for (const auto& p : providers)
    rows.push_back({text_of(p["service"]), text_of(p["node"]), text_of(p["endpoint"]),
                    p["metadata"].empty() ? "-" : show(p["metadata"])});
  print_table({"SERVICE", "NODE", "ENDPOINT", "METADATA"}, rows);
  return done;
}

int cmd_register(client& c, const args& a) {
  const auto& service = a.at(0, "the service name");
  const auto& endpoint = a.at(1, "the endpoint");
  a.at_most(3);
  std::string body;
  if (a.words.size() > 2) {
    json meta = json::parse(a.words[2], nullptr, false);
    if (!meta.is_object()) throw usage_failure("METADATA must be a JSON object");
    body = meta.dump();
  }
  const auto r = c.call(http::verb::put, "/services/" + segment(service) + "/" + segment(endpoint), body);
  return quiet_unless_json(c, r);
}

int cmd_deregister(client& c, const args& a) {
  const auto& service = a.at(0, "the service name");
  const auto& endpoint = a.at(1, "the endpoint");
  a.at_most(2);
  const auto r = c.call(http::verb::delete_, "/services/" + segment(service) + "/" + segment(endpoint));
  return quiet_unless_json(c, r);
}

int cmd_shards(client& c, const args& a) {
  if (!a.words.empty() && a.words[0] == "watch") {
    const auto& group = a.at(1, "the group name");
    a.at_most(2);
    follow(c, "/shards/" + segment(group) + "/events");
    return done;
  }
  a.at_most(1);
  if (a.words.empty()) {
    const auto r = c.call(http::verb::get, "/shards");
    if (c.config().json_output) return print_json(r), done;
    std::vector<std::vector<std::string>> rows;
    for (const auto& g : r["groups"])
      rows.push_back({text_of(g["group"]), show(g["shards"]), show(g["members"]), show(g["owned"])});
    print_table({"GROUP", "SHARDS", "MEMBERS", "OWNED HERE"}, rows);
    return done;
  }
  const auto r = c.call(http::verb::get, "/shards/" + segment(a.words[0]));
  if (c.config().json_output) return print_json(r), done;
  std::map<std::string, std::vector<std::size_t>> by_owner;
  for (std::size_t i = 0; i < r["owners"].size(); ++i)
    by_owner[r["owners"][i].is_null() ? "(none)" : text_of(r["owners"][i])].push_back(i);
  std::vector<std::vector<std::string>> rows;
  for (const auto& [owner, shards] : by_owner) {
    std::string list;
    for (auto s : shards) list += (list.empty() ? "" : " ") + std::to_string(s);
    rows.push_back({owner, std::to_string(shards.size()), list});
  }
  print_table({"OWNER", "SHARDS", "WHICH"}, rows);
  return done;
}

int cmd_reminders(client& c, const args& a) {
  if (!a.words.empty() && a.words[0] == "watch") {
    a.at_most(1);
    follow(c, "/reminders/events");
    return done;
  }
  a.at_most(1);
  json list = json::array();
  json r;
  if (a.words.empty()) {
    r = c.call(http::verb::get, "/reminders");
    list = r["reminders"];
  } else {
    r = c.call(http::verb::get, "/reminders/" + segment(a.words[0]));
    list.push_back(r);
  }
  if (c.config().json_output) return print_json(r), done;
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : list)
    rows.push_back({text_of(m["name"]), show(m["at_ms"]), m["every_ms"] == 0 ? "-" : show(m["every_ms"]),
                    m["owner"].is_null() ? "-" : text_of(m["owner"]), show(m["payload"])});
  print_table({"NAME", "AT_MS", "EVERY_MS", "OWNER", "PAYLOAD"}, rows);
  return done;
}

int cmd_remind(client& c, const args& a) {
  const auto& name = a.at(0, "the reminder name");
  a.at_most(1);
  json body = json::object();
  const auto in = a.one("--in");
  const auto at = a.one("--at");
  if (in.has_value() == at.has_value()) throw usage_failure("remind: give --in MS or --at EPOCH_MS");
  if (in) body["in_ms"] = number("--in", *in);
  if (at) body["at"] = number("--at", *at);
  if (auto e = a.one("--every")) body["every_ms"] = number("--every", *e);
  if (auto p = a.one("--payload")) body["payload"] = value_of(*p);
  const auto r = c.call(http::verb::put, "/reminders/" + segment(name), body.dump());
  return quiet_unless_json(c, r);
}

int cmd_unremind(client& c, const args& a) {
  const auto& name = a.at(0, "the reminder name");
  a.at_most(1);
  const auto r = c.call(http::verb::delete_, "/reminders/" + segment(name));
  return quiet_unless_json(c, r);
}

using command = int (*)(client&, const args&);

const std::map<std::string, command>& commands() {
  static const std::map<std::string, command> all{
      {"status", cmd_status},       {"members", cmd_members},     {"query", cmd_query},
      {"maps", cmd_maps},           {"get", cmd_get},             {"put", cmd_put},
      {"rm", cmd_rm},               {"keys", cmd_keys},           {"watch", cmd_watch},
      {"services", cmd_services},   {"register", cmd_register},   {"deregister", cmd_deregister},
      {"shards", cmd_shards},       {"reminders", cmd_reminders}, {"remind", cmd_remind},
      {"unremind", cmd_unremind}};
  return all;
}

// The flags each command takes (each with a value); others are usage errors.
const std::map<std::string, std::vector<std::string>>& command_flags() {
  static const std::map<std::string, std::vector<std::string>> all{
      {"members", {"--tag"}},
      {"query", {"--node", "--tag", "--timeout", "--max"}},
      {"remind", {"--in", "--at", "--every", "--payload"}}};
  return all;
}

int run(int argc, char** argv) {
  settings s;
  if (const char* addr = std::getenv("BARREL_P2P_ADDR"); addr && *addr) set_address(s, addr);
  std::string token_file;
  if (const char* f = std::getenv("BARREL_P2P_TOKEN_FILE"); f && *f) token_file = f;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << usage;
      return done;
    }
    if (a == "--json") {
      s.json_output = true;
    } else if (a == "--addr" || a == "--token-file") {
      if (i + 1 >= argc) throw usage_failure(a + " needs a value");
      (a == "--addr" ? set_address(s, argv[++i]) : void(token_file = argv[++i]));
    } else if (a.starts_with("--")) {
      throw usage_failure("unknown option " + a);
    } else {
      break;
    }
  }
  if (i >= argc) throw usage_failure("no command");
  const std::string name = argv[i++];
  const auto cmd = commands().find(name);
  if (cmd == commands().end()) throw usage_failure("unknown command '" + name + "'");
  args a;
  const auto allowed_it = command_flags().find(name);
  for (; i < argc; ++i) {
    const std::string w = argv[i];
    if (w == "--json") {
      s.json_output = true;
    } else if (w == "--help" || w == "-h") {
      std::cout << usage;
      return done;
    } else if (w.starts_with("--") && w.size() > 2) {
      const bool allowed = allowed_it != command_flags().end() &&
                           std::find(allowed_it->second.begin(), allowed_it->second.end(), w) != allowed_it->second.end();
      if (!allowed) throw usage_failure(name + ": unknown option " + w);
      if (i + 1 >= argc) throw usage_failure(w + " needs a value");
      a.flags.emplace(w, argv[++i]);
    } else {
      a.words.push_back(w);
    }
  }
  if (!token_file.empty()) s.token = read_token(token_file);
  client c(s);
  return cmd->second(c, a);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const usage_failure& e) {
    std::cerr << "barrel-p2p: " << e.what() << "\n(barrel-p2p --help lists the commands)\n";
    return usage_error;
  } catch (const unreachable_failure& e) {
    std::cerr << "barrel-p2p: " << e.what() << "\n";
    return unreachable;
  } catch (const node_failure& e) {
    std::cerr << "barrel-p2p: " << e.what() << "\n";
    return e.status == 404 ? not_found : refused;
  } catch (const std::exception& e) {
    std::cerr << "barrel-p2p: " << e.what() << "\n";
    return refused;
  }
}
