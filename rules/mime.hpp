#pragma once
// Raw MIME messages in JSON bodies: SES v2 SendEmail with `Content.Raw.Data`, SES v1
// SendRawEmail's `RawMessage.Data` (base64). When such a request names no Destination, SES
// sends to the addresses in the message's own To, Cc and Bcc header fields; a cap, a guard or
// an agent limit that read only the JSON would see no recipient at all. These read them.
// Pure functions; thread-safe.

#include <string>
#include <string_view>
#include <vector>

namespace bb::rules {

// Standard base64 (RFC 4648 alphabet, '=' padding optional); CR, LF, space and tab are
// skipped (a MIME-style line-wrapped encoding). False when anything else is in it.
bool decode_base64(std::string_view in, std::string& out);

// The addresses in the To, Cc and Bcc header fields (any case, folded lines unfolded) of
// the header section of `message`, split like an address list (commas outside quotes and
// angle brackets), group syntax (`team: a@x, b@y;`) read as its members. The views point
// into `scratch`, which the call overwrites. False when the message has no header section
// ending in an empty line (not a message: the caller treats the body as invalid), and when
// a To/Cc/Bcc value holds a comment `(...)` or the header section a bare CR: parsers differ
// on both, so the addresses cannot be read for certain.
bool mime_recipients(std::string_view message, std::string& scratch, std::vector<std::string_view>& out);

// The value of the From header field (unfolded: an address list, every mailbox to be
// checked), empty when there is none, when it holds a comment, or when the header section
// cannot be read.
std::string mime_from(std::string_view message);

}  // namespace bb::rules
