#pragma once
// Internal to the guardrails: the linear-time text scanners. Each runs over one piece of
// text (a decoded JSON string, a form value, or a raw body) once, word by word; words are
// found with a SIMD byte classification (SSE2 where available) so the cost per byte is small.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "rules/guardrails.hpp"

namespace bb::rules::detail {

// Word bytes: ASCII letters, digits, `_`, and every byte >= 0x80 (so UTF-8 words stay whole).
bool word_byte(unsigned char c);

// What a scanner found: a description without the value in clear, and its offset in the text.
struct text_hit {
    std::string what;
    std::size_t offset = 0;
};

// PII and secrets. Returns true and fills *hit at the first finding.
bool scan_pii(std::uint8_t kinds, std::string_view text, text_hit* hit);

// Content: blocked terms and links outside link_domains (if configured) return true with
// *hit; `unsubscribe` is set when the text holds an unsubscribe link or text.
bool scan_content(const content_guard& g, std::string_view text, bool& unsubscribe, text_hit* hit);

// `"Jane Doe" <Jane@Example.com>` -> `jane@example.com` into out (trimmed, lower-cased).
void normalize_address(std::string_view item, std::string& out);

}  // namespace bb::rules::detail
