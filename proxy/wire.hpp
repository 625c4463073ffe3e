#pragma once
// Writes HTTP messages as one flat head buffer plus the body, instead of Beast's
// serializer. Beast presents a message as a long chain of small buffers (every field
// name, separator and value is its own buffer), which showed up in profiles as ~7% of the
// proxy's CPU in buffer-sequence iteration and more in the kernel importing dozens of
// iovecs per sendmsg. Two buffers (or one, for a small body) cost neither.

#include "proxy/asio.hpp"

#include <boost/asio/write.hpp>

#include <array>
#include <string>
#include <tuple>

namespace bb::proxy {

inline void append_version(unsigned version, std::string& out) {
    out += version == 10 ? "HTTP/1.0" : "HTTP/1.1";
}

template <class Fields>
void append_fields(const Fields& f, std::string& out) {
    for (const auto& field : f) {
        const auto name = field.name_string();
        const auto value = field.value();
        out.append(name.data(), name.size());
        out += ": ";
        out.append(value.data(), value.size());
        out += "\r\n";
    }
    out += "\r\n";
}

inline void append_head(const request& req, std::string& out) {
    const auto m = req.method_string();
    const auto t = req.target();
    out.append(m.data(), m.size());
    out += ' ';
    out.append(t.data(), t.size());
    out += ' ';
    append_version(req.version(), out);
    out += "\r\n";
    append_fields(req.base(), out);
}

inline void append_head(const response& res, std::string& out) {
    append_version(res.version(), out);
    out += ' ';
    out += std::to_string(res.result_int());
    out += ' ';
    const auto reason = res.reason();
    out.append(reason.data(), reason.size());
    out += "\r\n";
    append_fields(res.base(), out);
}

// Bodies up to this size are copied behind the head so the message goes out in one buffer.
inline constexpr std::size_t inline_body_limit = 16 * 1024;

// `scratch` is reused across calls to avoid an allocation per message. The message must
// already be framed (Content-Length set, or a HEAD/204/304 response).
template <class Stream, class Message>
asio::awaitable<std::tuple<error_code, std::size_t>> write_message(Stream& stream, const Message& m,
                                                                  std::string& scratch) {
    scratch.clear();
    append_head(m, scratch);
    const auto& body = m.body();
    if (body.size() <= inline_body_limit) {
        scratch += body;
        co_return co_await asio::async_write(stream, asio::buffer(scratch), use_tuple);
    }
    const std::array<asio::const_buffer, 2> bufs{asio::buffer(scratch), asio::buffer(body)};
    co_return co_await asio::async_write(stream, bufs, use_tuple);
}

}  // namespace bb::proxy
