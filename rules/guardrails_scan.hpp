#pragma once
// Internal to the guardrails: the linear-time text scanners. Each runs over one piece of
// text (a decoded JSON string, a form value, or a raw body) once. Words are found with a SIMD
// byte classification (SSE2 where available), and the scanners visit only the words that can
// matter to them (PII: words starting with a digit, an upper-case letter or b g r s x; terms:
// words whose first two bytes start a term word) and the `//` pairs (links), so most bytes
// cost only their share of the classification.
//
// Each fast scanner has a word-by-word reference (`*_reference`) that visits every word in
// turn; they must return the same findings (tests/rules/test_guardrails.cpp checks it over
// random texts). The references are the specification, not used on the data plane.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <span>
#include <string_view>
#include <vector>

#include "rules/guardrails.hpp"

namespace bb::rules::detail {

// Word bytes: ASCII letters, digits, `_`, and every byte >= 0x80 (so UTF-8 words stay whole).
bool word_byte(unsigned char c);

// What a scanner found: a description without the value in clear, and its offset in the text.
struct text_hit {
    std::string what;
    std::size_t offset = 0;
};

// For the tests: the first byte whose SIMD classes (every implementation this CPU runs)
// differ from the byte tables, described; empty if none.
std::string classification_mismatch(std::string_view text);

// For the tests: where the incremental JSON path matching the guards use differs from
// matching every path against every value's full path, along a walk of `json`; empty if
// nowhere. *under (if given) counts the values under a path.
std::string path_tracking_mismatch(std::string_view json, const std::vector<guard_field>& fields,
                                   std::size_t* under = nullptr);
// For the tests: the same for several guards whose paths are classified once, in the shared
// parse (guard_paths): where a guard reading its bits differs from matching its paths against
// every value's full path, or a value below a dead() one is on a path; empty if nowhere.
// *shared counts the guards that read bits (the others follow their own paths).
std::string shared_tracking_mismatch(std::string_view json, const std::vector<std::vector<guard_field>>& guards,
                                     std::size_t* shared = nullptr);
// For the tests: the string values of `json` as the guards' walk decodes them, in order;
// false if the walk finds `json` invalid.
bool decoded_strings(std::string_view json, std::vector<std::string>& out);

// PII and secrets. Returns true and fills *hit at the first finding. *split_by_tag (if
// given) is set when a tag shown as nothing may join two digit groups of one number
// (`4111 <b>1111</b>`).
bool scan_pii(std::uint8_t kinds, std::string_view text, text_hit* hit, bool* split_by_tag = nullptr);
// No text shorter than this has a finding: an SSN is 11 bytes, a card 13 digits, IBANs and
// secrets are longer. (Most JSON values, names, ids and numbers, are shorter.)
inline std::size_t pii_min_length(std::uint8_t kinds) {
    return kinds & static_cast<std::uint8_t>(pii_kind::ssn) ? 11 : 13;
}
bool scan_pii_reference(std::uint8_t kinds, std::string_view text, text_hit* hit);

// Content: blocked terms and links outside link_domains (if configured) return true with
// *hit; `unsubscribe` is set when the text holds an unsubscribe link or text (when nothing
// is found: after a finding it is left as it was, or set).
// terms_only: the blocked terms only (no links, no unsubscribe). *split_by_tag (if given) is
// set when a '<' lies between two words of a partial match of a term (`free</b> <i>money`),
// or a tag shown as nothing joins two pieces of one word (`fr<b>ee</b>`).
bool scan_content(const content_guard& g, std::string_view text, bool& unsubscribe, text_hit* hit,
                  bool terms_only = false, bool* split_by_tag = nullptr);
bool scan_content_reference(const content_guard& g, std::string_view text, bool& unsubscribe, text_hit* hit);

// Text as a reader is shown it, for the characters that hide a number or a word from a
// scan of the bytes as written: HTML character references are decoded (numeric ones, `&#52;`
// `&#x34`, 128-159 as windows-1252, and named ones such as `&nbsp;` `&shy;` `&ndash;`
// `&colon;`); invisible characters (zero-width spaces and joiners, soft hyphens, direction
// marks, word joiners, variation selectors, byte-order marks) are dropped; no-break and other
// Unicode spaces show as ' ', Unicode hyphens and dashes as '-', full-width digits and
// letters as ASCII ones. With `tags`, tags go too: a tag of an element shown inside a line
// (b, i, span, a, font, ...) and a comment show as nothing, any other tag as a line break
// ('\n': it ends a word but does not join digit groups, as its line or cell break does not);
// else tags stay as written. Never longer than `text`.
void show(std::string_view text, std::string& out, bool tags = false);
// The offset in `text` of byte `shown` of show(text, tags) (of the character it comes from).
std::size_t written_offset(std::string_view text, std::size_t shown, bool tags = false);
// Whether show(text) could find more than a scan of `text` does. The five named references of
// ASCII punctuation (`&amp;` `&lt;` `&gt;` `&quot;` `&apos;`) do not count: the scanners read
// them as punctuation (see is_punctuation_reference); nor do numeric references of plain
// symbols (`&#8217;` `&#169;`), which show as themselves.
bool hides_characters(std::string_view text);
// Whether text[s, e) is the word of one of those five references (`amp` in `&amp;`): the
// content scanners pass over it as over the punctuation it shows (`AT&amp;T` is AT&T).
bool is_punctuation_reference(std::string_view text, std::size_t s, std::size_t e);

// What the guards call: scan_pii / scan_content, and when those find nothing in a text that
// hides characters, the same scan over the text as shown (a hit's offset is in `text`); for
// blocked terms and PII, also over the text without its tags when a tag may split a term, a
// word or a number (see split_by_tag).
bool find_pii(std::uint8_t kinds, std::string_view text, text_hit* hit);
// find_pii over the bytes of a file (an attachment, an uploaded form file), and then, when
// it is in UTF-16 (Excel's "Unicode Text", PowerShell's and Windows Notepad's exports), over
// its text: the hit's offset still in the file's bytes and its `what` saying so.
bool find_pii_in_file(std::uint8_t kinds, std::string_view file, text_hit* hit);
// The text of a file in UTF-16, in UTF-8, into `out`: one with a byte order mark (not
// UTF-32LE's, FF FE 00 00), or without one whose first 64 code units are ASCII with a NUL in
// every other byte. False (and `out` untouched) for any other file. Unpaired surrogates
// become U+FFFD; an odd last byte is dropped.
bool utf16_text(std::string_view file, std::string& out);
bool find_content(const content_guard& g, std::string_view text, bool& unsubscribe, text_hit* hit);

// The verdicts of the last few hosts looked up in one domain_set, for one request (its links,
// or its recipients, mostly share a handful of domains). Hosts up to 64 bytes are kept, as
// given (another case is another entry). Not thread-safe: a local.
class domain_memo {
public:
    explicit domain_memo(const domain_set& set) : set_{set} {}
    bool contains(std::string_view host) {
        for (const auto& e : entries_) {
            if (e.len == host.size() && e.len != 0 && std::memcmp(e.bytes, host.data(), e.len) == 0) {
                return e.verdict;
            }
        }
        const bool verdict = set_.contains(host);
        if (!host.empty() && host.size() <= sizeof entries_[0].bytes) {
            entry& e = entries_[next_++ % 4];
            std::memcpy(e.bytes, host.data(), host.size());
            e.len = host.size();
            e.verdict = verdict;
        }
        return verdict;
    }

private:
    struct entry {
        char bytes[64];
        std::size_t len = 0;
        bool verdict = false;
    };
    const domain_set& set_;
    entry entries_[4];
    unsigned next_ = 0;
};

// The simple case folding (Unicode CaseFolding.txt, status C) of a code point written in two
// UTF-8 bytes (U+0080 to U+07FF): Latin-1, Latin Extended-A and -B, Greek, Coptic, Cyrillic,
// Armenian; a Greek vowel also loses its tonos or dialytika (Greek capitals drop them). Only
// folds that stay two bytes (not `ſ` to `s`, `Ⱥ` to `ⱥ`), and not U+0345 (a combining mark);
// other code points are kept.
char32_t fold_two_byte(char32_t cp);
// `s` with every two-byte code point folded (fold_two_byte), ß as ss (Unicode's full case
// folding: STRASSE and the Swiss Strasse are Straße; fold_two_byte, the simple folding,
// keeps ß) and ASCII lower-cased; the same length as `s`.
std::string fold_case(std::string_view s);
// fold_case of the `len` bytes at `p` into `out` (as many bytes).
void fold_word(const unsigned char* p, std::size_t len, char* out);
// The two-byte code points whose fold is `folded`, `folded` among them (at most 8; none
// past U+07FF; an ASCII `folded` only itself).
std::span<const char16_t> case_variants(char32_t folded);

// A 64-bit hash of the bytes, 8 at a time (the length is mixed in first).
std::uint64_t bytes_hash(std::string_view s);

// `"Jane Doe" <Jane@Example.com>` -> `jane@example.com` into out (trimmed, lower-cased).
void normalize_address(std::string_view item, std::string& out);
// The same without its fast path for plain addresses (for the tests: the two agree).
void normalize_address_general(std::string_view item, std::string& out);

}  // namespace bb::rules::detail
