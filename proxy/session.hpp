#pragma once
// One coroutine per client connection. Read `session.cpp` top to bottom to see where a
// request goes: head (bounded, strict framing) -> body (bounded) -> route -> rewrite ->
// upstream exchange (the client watched meanwhile) -> response -> access log.

#include "proxy/asio.hpp"

namespace bb::proxy {

class worker;

// Runs until the connection closes. Never throws for network errors (they are values);
// admission (the connection count) was taken by the caller and is released here.
// `listener`: index in config.listeners of the listener that accepted it. `cancel`: a
// signal bound to the slot of the coroutine's completion handler, kept alive by the caller
// until it completes; the session uses it to abort an upstream exchange whose client left.
asio::awaitable<void> run_session(worker& w, tcp::socket socket, std::size_t listener,
                                  asio::cancellation_signal* cancel);

}  // namespace bb::proxy
