#pragma once
// The sandbox action: forward the request with the API's own dry-run switch turned on, so
// the provider validates it but sends nothing. Pure functions (no I/O, no Beast);
// thread-safe.
//
// When a body cannot be rewritten with certainty the caller must not forward it: a
// request that was meant to be sandboxed and reaches the real API is a real send.

#include <optional>
#include <string>
#include <string_view>

namespace bb::proxy {

enum class sandbox_api { sendgrid, mailgun };

// SendGrid v3 mail/send: sets mail_settings.sandbox_mode.enable = true, keeping every
// other field (an existing mail_settings object is merged, not replaced).
std::optional<std::string> sendgrid_sandbox(std::string_view json_body, std::string* error);

// Mailgun messages: o:testmode=yes, for application/x-www-form-urlencoded and
// multipart/form-data bodies. Any o:testmode the client set is replaced. An o:testmode in
// the query string (`query`, no '?') is refused: the API may read it there too, and which of
// two it takes is its own choice.
std::optional<std::string> mailgun_testmode(std::string_view body, std::string_view content_type,
                                            std::string* error, std::string_view query = {});

// Why a body must not go to a sandbox breaker's alternate upstream (a test fake, a capture
// server), or "" when it may: a field named like a credential (core/credential.hpp) in a form
// body, or a top-level key so named in a JSON object (a token endpoint's client_secret or
// refresh_token, a login's password, SendGrid v2's api_key), or a form or JSON body that
// cannot be read to tell. Mailgun's message fields (`v:`, `h:`, `t:`, `o:`: the mail's
// variables, headers and options) are the mail's content, not credentials for the API, and
// so are the keys inside a JSON body (a template's `reset_token`). A body of another type, or
// of none, is read as what it looks like (JSON, else a urlencoded form).
std::string credential_in_body(std::string_view body, std::string_view content_type);

// Picks the API from the content type: JSON -> SendGrid, form encodings -> Mailgun.
std::optional<sandbox_api> detect_sandbox_api(std::string_view content_type);

// The dry-run switches an upstream takes: its configured `sandbox_api` ("sendgrid",
// "mailgun", "any": read from the request, for a test fake or a relay to both; "none"),
// else from its host: SendGrid's (sendgrid.com, sendgrid.net) and Mailgun's (mailgun.net)
// API hosts take their own; any other host or address (a CRM, another provider, an internal
// or loopback relay: set sandbox_api) has none: a path that looks like a mail send there is
// not one we can switch.
enum class upstream_sandbox { sendgrid, mailgun, none, any };
upstream_sandbox upstream_sandbox_of(std::string_view configured, std::string_view host);

// The API whose dry-run switch applies to this request, from its method, path (as the
// client sent it) and content type: a SendGrid mail send (POST .../mail/send, JSON) or a
// Mailgun message (POST .../messages, a form), when the upstream takes that switch. Anything
// else (a CRM write, a JSON body to another endpoint, a Mailgun-looking path on Salesforce)
// has no switch we know: the caller must not forward it as sandboxed.
std::optional<sandbox_api> sandbox_api_for(std::string_view method, std::string_view path,
                                           std::string_view content_type,
                                           upstream_sandbox upstream = upstream_sandbox::any);

}  // namespace bb::proxy
