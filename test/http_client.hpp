// A minimal HTTP client for the HTTP suites: one request per connection.
#pragma once

#include <barrel_p2p/task.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace barrel_p2p::testing {

struct reply {
  unsigned status = 0;
  std::string body;
  std::string content_type;
  nlohmann::json body_json() const { return nlohmann::json::parse(body, nullptr, false); }
};

inline task<reply> send_request(std::uint16_t port, boost::beast::http::verb method, std::string target,
                                std::string body = {}, std::string token = {}) {
  namespace asio = boost::asio;
  namespace beast = boost::beast;
  namespace http = beast::http;
  beast::tcp_stream stream(co_await asio::this_coro::executor);
  co_await stream.async_connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port),
                                asio::use_awaitable);
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!token.empty()) req.set(http::field::authorization, "Bearer " + token);
  if (!body.empty() || method == http::verb::put) {
    req.body() = std::move(body);
    req.prepare_payload();
  }
  co_await http::async_write(stream, req, asio::use_awaitable);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  co_await http::async_read(stream, buffer, parser, asio::use_awaitable);
  auto res = parser.release();
  reply r;
  r.status = res.result_int();
  r.body = res.body();
  r.content_type = std::string(res[http::field::content_type]);
  co_return r;
}

}  // namespace barrel_p2p::testing
