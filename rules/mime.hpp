#pragma once
// Raw MIME messages in JSON bodies: SES v2 SendEmail with `Content.Raw.Data`, SES v1
// SendRawEmail's `RawMessage.Data` (base64). When such a request names no Destination, SES
// sends to the addresses in the message's own To, Cc and Bcc header fields; a cap, a guard or
// an agent limit that read only the JSON would see no recipient at all. These read them.
// Pure functions; thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bb::rules {

// Standard base64 (RFC 4648 alphabet, '=' padding optional); CR, LF, space and tab are
// skipped (a MIME-style line-wrapped encoding). False when anything else is in it.
bool decode_base64(std::string_view in, std::string& out);

// The raw message a form field holds: in base64 (SES v1 RawMessage.Data; decoded into `buf`,
// nullopt when it is not base64) or as written (Mailgun messages.mime's `message`).
inline std::optional<std::string_view> form_field_message(std::string_view value, bool base64, std::string& buf) {
    if (!base64) {
        return value;
    }
    if (!decode_base64(value, buf)) {
        return std::nullopt;
    }
    return std::string_view{buf};
}

// The addresses in the To, Cc and Bcc header fields (any case, folded lines unfolded) of
// the header section of `message`, split like an address list (commas outside quotes and
// angle brackets), group syntax (`team: a@x, b@y;`) read as its members. The views point
// into `scratch`, which the call overwrites. False when the message has no header section
// ending in an empty line (not a message: the caller treats the body as invalid), and when
// a To/Cc/Bcc value holds a comment `(...)` or the header section a bare CR: parsers differ
// on both, so the addresses cannot be read for certain.
bool mime_recipients(std::string_view message, std::string& scratch, std::vector<std::string_view>& out);

// What the content and PII guards read of a raw message (the recipients are read above).
struct mime_text {
    // attachment: a part of another type (a CSV, a PDF), its transfer encoding undone, bytes
    // as they are (read by the pii guard, as JSON attachments are; not by the content guard).
    enum class kind : std::uint8_t { subject, header, body, attachment };
    kind k = kind::body;
    std::string where;  // "Subject", "header X-Note", "part 1.2 (text/html)", "preamble of part 1"
    std::string text;   // decoded: encoded words, quoted-printable and base64 undone
    // The message's own From (not an attached message's): the sender's name as shown,
    // sender_name_text of the value as written (its words are content; the addresses not).
    std::string sender;
};
struct mime_content {
    std::vector<mime_text> texts;
    bool list_unsubscribe = false;  // the message has a List-Unsubscribe header field
};

// Reads a message as a mail client shows it: every header field value with its RFC 2047
// encoded words decoded (the Subject marked as such), and the body of every text part
// (text/*, or no valid Content-Type) with its Content-Transfer-Encoding undone, through nested
// multiparts (a multipart/digest's untyped parts as messages) and attached messages
// (message/rfc822). Parts of other types (images, PDFs, CSV files) come as attachments,
// decoded but not converted; multipart preambles and
// epilogues are, as plain text. HTML is returned as markup (the guards read a text again as
// shown when it hides characters: rules/guardrails_scan.hpp, show()). Linear in the
// message. False with `why` when the message cannot be read for certain: a header section
// that cannot be read (see mime_recipients), a second Content-Type or
// Content-Transfer-Encoding, a second or RFC 2231 charset or boundary parameter, a multipart
// without a boundary or with a bare CR in its body, an encoded multipart or attached message,
// a transfer encoding other than 7bit, 8bit, binary, quoted-printable or base64, base64 that
// is not, a text or encoded word in a charset not known to write ASCII as ASCII (UTF-16,
// UTF-7, ISO-2022, EBCDIC, unknown ones: a blocked term or a card number would not show as
// itself), more than 16 levels of nesting, 1,000 parts or 10,000 header fields.
bool mime_content_of(std::string_view message, mime_content& out, std::string* why);

// The Subject header field's value, RFC 2047 encoded words decoded ("" when there is none);
// nullopt when the header section cannot be read or a word's charset is not read (as above).
std::optional<std::string> mime_subject(std::string_view message);

// The values of every From and Sender header field as one address list (unfolded, joined
// by ", ": every mailbox to be checked), empty when there is none, when one holds a comment,
// or when the header section cannot be read.
std::string mime_from(std::string_view message);
// The values of every Reply-To header field, joined as mime_from joins them; empty when
// there is none; nullopt when one holds a comment or the header section cannot be read.
std::optional<std::string> mime_reply_to(std::string_view message);

// What a mail client shows of an address header's value beside its addresses, into `out`:
// the value with every address blanked out, byte for byte (offsets in it are offsets in the
// value): angle-addrs (`<jane@example.com>`, to their '>' outside quotes) and addr-specs (a
// word with an '@' outside quotes and comments, a quoted local part `"jane"@x.com` with it).
// Display names, quoted or not, and comments are kept as written (`"Free Money"
// <a@x.com>` keeps `"Free Money"`; `a@x.com (Free Money)` its comment). An unterminated
// quote quotes nothing, and an unterminated comment comments nothing.
std::string_view address_display_text(std::string_view value, std::string& out);
// The sender's name as a mail client shows it, into `out`: address_display_text of the value
// as written, then its RFC 2047 encoded words decoded (`=?utf-8?B?...?=`: SES asks for them
// in a non-ASCII name, and clients decode them wherever they are). The addresses are found
// first, so a decoded `<` or `@` is the name's (`=?utf-8?Q?=3CFree_Money=3E?=` shows as
// `<Free Money>`). as_written: `out` is the value's bytes in place (its offsets are the
// value's); decoded: words were decoded; unreadable: a word could not be (a charset not read
// here, base64 that does not decode: what a client shows is unknown, as for a raw message's
// header), and `out` is the text with the words as written.
enum class sender_text : std::uint8_t { as_written, decoded, unreadable };
sender_text sender_name_text(std::string_view value, std::string& out);

// Whether a List-Unsubscribe value (RFC 2369) gives a way to unsubscribe: an angle-bracketed
// https:, http: or mailto: URI. An empty or placeholder value satisfies no unsubscribe check.
bool list_unsubscribe_value(std::string_view value);

}  // namespace bb::rules
