#pragma once
// Common Asio/Beast vocabulary for proxy/. Only proxy/ (and its tests) may include this:
// rules/ and breakers/ stay free of I/O headers so they compile fast and test alone.

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "proxy/field_alloc.hpp"

namespace bb::proxy {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

// Network errors are values, not exceptions (Asio's as_tuple pattern): every
// `auto [ec, n] = co_await op(..., use_tuple)` checks ec on the spot.
inline constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// Header fields come from a per-thread recycling allocator (field_alloc.hpp).
using fields = http::basic_fields<field_allocator<char>>;
using request = http::request<http::string_body, fields>;
using response = http::response<http::string_body, fields>;
using request_parser = http::request_parser<http::string_body, field_allocator<char>>;
using response_parser = http::response_parser<http::string_body, field_allocator<char>>;

}  // namespace bb::proxy
