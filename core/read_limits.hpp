#pragma once
// How much of one unterminated line an HTTP read may buffer.
//
// Beast (1.81) stores a header or trailer field's size in 16 bits and throws
// std::length_error, from inside an asynchronous read, for a field of 65,534 bytes or more:
// out of io_context::run that ends the process. Nothing else bounds a chunked message's
// trailers or chunk extensions, which wait in the read buffer until their line ends (the
// parser takes body bytes as they come), so every read that may meet them (a client's
// request, an upstream's answer, an admin call, an alert receiver's answer) caps its buffer
// below that: max_size(std::max(buffer.size(), max_buffered_line)).

#include <cstddef>

namespace bb {

inline constexpr std::size_t max_buffered_line = 65000;

}  // namespace bb
