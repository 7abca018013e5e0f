// The one coroutine type of the library: every public asynchronous operation
// is a `task<T>`, to be co_awaited on an Asio executor.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/any_io_executor.hpp>

namespace barrel_p2p {

template <class T = void>
using task = boost::asio::awaitable<T>;

using executor = boost::asio::any_io_executor;

}  // namespace barrel_p2p
