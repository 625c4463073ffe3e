// libFuzzer target: the proxy's own readers of what a client sends, beside Beast's parser
// (proxy/framing.hpp: the request head's framing, the target, ambiguous paths) and the
// sandbox rewrites (proxy/sandbox.hpp), with the property that makes the sandbox safe: a
// body the rewrite returns has its dry-run switch on in every copy an upstream may read.
// A rewrite that returned a body without it would send real mail from a sandboxed agent.
//
// Input: byte 0 picks what is exercised and the content type, byte 1 the query string's
// length (from the front of the rest); the rest is the head, target or body.

#include <simdjson.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/json_key.hpp"
#include "proxy/framing.hpp"
#include "proxy/sandbox.hpp"
#include "rules/form.hpp"

namespace {

[[noreturn]] void finding(const char* what, std::string_view in, std::string_view out) {
    std::fprintf(stderr, "fuzz_proxy_input: %s\ninput:  %.*s\noutput: %.*s\n", what, static_cast<int>(in.size()),
                 in.data(), static_cast<int>(out.size()), out.data());
    std::abort();
}

// Every copy of mail_settings (as Go matches keys) is an object whose every sandbox_mode is
// an object with `enable: true` in every copy, and there is at least one of each.
void check_sendgrid(std::string_view in, const std::string& out) {
    simdjson::dom::parser parser;
    simdjson::dom::object top;
    if (parser.parse(simdjson::padded_string{out}).get(top) != simdjson::SUCCESS) {
        finding("the sandboxed SendGrid body is not a JSON object", in, out);
    }
    int settings = 0;
    for (auto field : top) {
        if (!bb::json_key::matches(field.key, "mail_settings")) {
            continue;
        }
        ++settings;
        simdjson::dom::object ms;
        if (field.value.get(ms) != simdjson::SUCCESS) {
            finding("a mail_settings of the sandboxed body is not an object", in, out);
        }
        int modes = 0;
        for (auto f : ms) {
            if (!bb::json_key::matches(f.key, "sandbox_mode")) {
                continue;
            }
            ++modes;
            simdjson::dom::object sm;
            if (f.value.get(sm) != simdjson::SUCCESS) {
                finding("a sandbox_mode of the sandboxed body is not an object", in, out);
            }
            int enables = 0;
            for (auto e : sm) {
                if (bb::json_key::matches(e.key, "enable")) {
                    ++enables;
                    bool on = false;
                    if (e.value.get(on) != simdjson::SUCCESS || !on) {
                        finding("a sandbox_mode.enable of the sandboxed body is not true", in, out);
                    }
                }
            }
            if (enables == 0) {
                finding("a sandbox_mode of the sandboxed body has no enable", in, out);
            }
        }
        if (modes == 0) {
            finding("a mail_settings of the sandboxed body has no sandbox_mode", in, out);
        }
    }
    if (settings == 0) {
        finding("the sandboxed body has no mail_settings", in, out);
    }
}

// The rewritten form reads as a form, and every o:testmode in it and in the query is "yes".
void check_mailgun(std::string_view in, std::string_view ct, std::string_view query, const std::string& out) {
    std::vector<std::pair<std::string, std::string>> fields;
    if (!bb::rules::parse_form_fields(ct, out, query, fields)) {
        finding("the Mailgun body in test mode does not read as a form", in, out);
    }
    int modes = 0;
    for (const auto& [name, value] : fields) {
        if (bb::proxy::iequals(name, "o:testmode")) {
            ++modes;
            if (value != "yes") {
                finding("an o:testmode of the Mailgun body in test mode is not \"yes\"", in, out);
            }
        }
    }
    if (modes == 0) {
        finding("the Mailgun body in test mode has no o:testmode", in, out);
    }
}

constexpr std::array<std::string_view, 4> form_types{
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data; boundary=\"a b\"",
    "application/x-www-form-urlencoded; charset=utf-8",
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) {
        return 0;
    }
    std::string_view rest{reinterpret_cast<const char*>(data + 2), size - 2};
    const std::size_t qlen = std::min<std::size_t>(data[1] & 0x3f, rest.size());
    const std::string_view query = rest.substr(0, qlen);
    const std::string_view body = rest.substr(qlen);
    std::string error;
    switch (data[0] % 4) {
        case 0: {
            const auto head = bb::proxy::check_request_head(rest, 100);
            (void)head;
            (void)bb::proxy::find_head_end(rest, data[1] % (rest.size() + 1));
            break;
        }
        case 1: {
            bb::proxy::target_parts parts;
            if (bb::proxy::split_target(rest, parts)) {
                (void)bb::proxy::ambiguous_path(parts.path);
            }
            (void)bb::proxy::ambiguous_path(rest);
            break;
        }
        case 2:
            if (const auto out = bb::proxy::sendgrid_sandbox(rest, &error)) {
                check_sendgrid(rest, *out);
            }
            break;
        case 3: {
            const std::string_view ct = form_types[(data[0] / 4) % form_types.size()];
            if (const auto out = bb::proxy::mailgun_testmode(body, ct, &error, query)) {
                check_mailgun(body, ct, query, *out);
            }
            break;
        }
    }
    return 0;
}
