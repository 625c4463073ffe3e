#include "rules/agent_constraints.hpp"

#include "core/utf8.hpp"

#include <simdjson.h>

#include <algorithm>
#include <initializer_list>
#include <utility>

#include "core/json_reader.hpp"
#include "core/json_key.hpp"
#include "core/method_override.hpp"
#include "core/url_decode.hpp"
#include "rules/form.hpp"
#include "rules/guardrails.hpp"
#include "rules/guardrails_scan.hpp"
#include "rules/idna.hpp"
#include "rules/mime.hpp"
#include "rules/request.hpp"

namespace bb::rules {

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

struct scratch {
    simdjson::dom::parser parser;
    std::vector<std::pair<std::string, std::string>> form;
    std::vector<std::string_view> items;
    std::string addr;
};

scratch& local() {
    thread_local scratch s;
    return s;
}

// A value from the body as a reason shows it: quoted, at most 64 bytes, ASCII only (the
// reason goes into a JSON error answer; a cut UTF-8 sequence must not reach it).
std::string shown(std::string_view v) {
    constexpr std::size_t max = 64;
    std::string out{v.substr(0, max)};
    for (auto& ch : out) {
        if (static_cast<unsigned char>(ch) >= 0x80) {
            ch = '?';
        }
    }
    return cfg::quote(out) + (v.size() > max ? "..." : "");
}

bool mentions_json(std::string_view content_type) {
    return icontains(content_type.substr(0, content_type.find(';')), "json");  // the media type, not its parameters
}

// Collects what the body says and remembers the first constraint it breaks.
class checker {
public:
    checker(const body_constraints& c, scratch& s) : c_(c), s_(s) {}

    bool checks_from() const { return !c_.from_domains.empty() && reason_.empty(); }
    bool checks_reply_to() const { return !c_.reply_to_domains.empty() && reason_.empty(); }
    bool checks_template() const { return !c_.template_ids.empty() && reason_.empty(); }
    bool checks_count() const { return c_.max_recipients.has_value() && reason_.empty(); }

    void fail(std::string why) {
        if (reason_.empty()) {
            reason_ = std::move(why);
        }
    }

    void add_recipients(std::uint64_t n) { recipients_ += n; }
    std::uint64_t recipients() const { return recipients_; }

    // A recipient field given as one string may hold a list ("a@x.com, Bob <b@y.com>").
    void add_recipient_list(std::string_view list) {
        recipients_ += recipient_list_size(list);
        list_items();
    }

    // Mailing lists: one address for every member of the list (`newsletter@mg.example.com`,
    // a Google Group), whose size cannot be counted against max_recipients: refused to an
    // agent held to it. Which addresses are lists: those at list_domains, or without it, at
    // a Mailgun send's sending domain itself (where Mailgun's lists live).
    bool checks_lists() const {
        return checks_count() && (c_.list_domains ? !c_.list_domains->empty() : !mailgun_domain_.empty());
    }
    void list_address(std::string_view item) {
        if (!checks_lists()) {
            return;
        }
        detail::normalize_address(item, s_.addr);
        const auto at = s_.addr.rfind('@');
        if (at == std::string::npos) {
            return;
        }
        // (normalize_address gives the domain in its Unicode form, as the config keeps them.)
        const std::string_view domain = std::string_view{s_.addr}.substr(at + 1);
        if (c_.list_domains) {
            // A listed domain and its subdomains (`lists.example.com`: `eu.lists.example.com`
            // too), as every other domain list of the config reads.
            const auto listed = [&](const std::string& d) {
                return domain.size() >= d.size() && iequals(d, domain.substr(domain.size() - d.size())) &&
                       (domain.size() == d.size() || domain[domain.size() - d.size() - 1] == '.');
            };
            if (std::any_of(c_.list_domains->begin(), c_.list_domains->end(), listed)) {
                fail("a recipient at " + shown(domain) + ", a mailing list's domain (list_domains), whose size this "
                     "agent's max_recipients cannot count");
            }
        } else if (iequals(domain, mailgun_domain_)) {
            fail("a recipient at the sending domain " + shown(mailgun_domain_) +
                 " (a Mailgun mailing list's address: one address for all its members), whose size this agent's "
                 "max_recipients cannot count");
        }
    }
    // The addresses recipient_list_size just split, each looked up as a mailing list.
    void list_items() {
        if (checks_lists()) {
            for (const auto item : s_.items) {
                list_address(item);
            }
        }
    }
    // The addresses in such a list (not added).
    std::uint64_t recipient_list_size(std::string_view list) {
        s_.items.clear();
        if (!split_addresses(list, s_.items)) {
            fail("a recipient list " + std::string{unsplittable_list});
        }
        return s_.items.size();
    }

    // A from value: `a@x.com` or `Name <a@x.com>`; a list is checked address by address.
    void from(std::string_view list) {
        if (!checks_from()) {
            return;
        }
        each_domain(list, "from", true, [&](std::string_view domain) {
            return std::any_of(c_.from_domains.begin(), c_.from_domains.end(),
                               [&](const std::string& d) { return iequals(d, domain); });
        });
    }

    // A Reply-To value, when reply_to_domains is given: every address in it must be at one
    // of them or at a from domain (an agent's replies go where they are meant to, not to
    // wherever a prompt says).
    void reply_to(std::string_view list) {
        if (!checks_reply_to()) {
            return;
        }
        each_domain(list, "reply-to", false, [&](std::string_view domain) {
            const auto is = [&](const std::string& d) { return iequals(d, domain); };
            return std::any_of(c_.from_domains.begin(), c_.from_domains.end(), is) ||
                   std::any_of(c_.reply_to_domains.begin(), c_.reply_to_domains.end(), is);
        });
    }

    // The sending domain a Mailgun send names in its path (/v3/{domain}/messages): the mail
    // goes out signed for that domain and on its reputation, whatever its From says. Allowed
    // when it is a from domain or a subdomain of one (Mailgun's `mg.example.com` beside a
    // From at `example.com`, which DMARC's relaxed alignment accepts). Kept for list_address
    // too, in the Unicode form the config keeps domains in and normalize_address gives a
    // recipient's (rules/idna.hpp).
    void sending_domain(std::string_view path_domain) {
        std::string unicode;
        mailgun_domain_.assign(idna::may_have_other_form(path_domain) && idna::to_unicode(path_domain, unicode)
                                   ? std::string_view{unicode}
                                   : path_domain);
        if (!checks_from()) {
            return;
        }
        const std::string_view domain = mailgun_domain_;
        const bool allowed = std::any_of(c_.from_domains.begin(), c_.from_domains.end(), [&](const std::string& d) {
            return iequals(d, domain) ||
                   (domain.size() > d.size() + 1 && domain[domain.size() - d.size() - 1] == '.' &&
                    iequals(d, domain.substr(domain.size() - d.size())));
        });
        if (!allowed) {
            fail("sending domain " + shown(domain) + " (the Mailgun path) is not allowed for this agent");
        }
    }

    // `arn`: an SES TemplateArn (`arn:aws:ses:...:template/NAME`) also matches by its NAME.
    void template_id(std::string_view id, bool arn) {
        ++templates_;
        if (!checks_template()) {
            return;
        }
        std::string_view name = id;
        if (arn) {
            constexpr std::string_view marker = ":template/";
            if (const auto p = id.rfind(marker); p != std::string_view::npos) {
                name = id.substr(p + marker.size());
            }
        }
        const bool allowed = std::any_of(c_.template_ids.begin(), c_.template_ids.end(),
                                         [&](const std::string& t) { return t == id || t == name; });
        if (!allowed) {
            fail("template " + shown(id) + " is not allowed for this agent");
        }
    }

    // Content the API sends as written, whatever template the body also names (SES v2
    // Content.Simple or Raw, an inline TemplateContent, SES v1 Message.* or a raw message,
    // Mailgun messages.mime): SES never combines it with a template, and a template key from
    // another API's schema (`template_id` beside Content.Simple) is ignored by it.
    // (The first field, except that SendGrid's `content` gives way to any other: beside a
    // legacy template it goes into the template's frame, which own_content_field's callers
    // may accept, while SES sends its Content.Simple as written.)
    void own_content(std::string_view where) {
        if (own_content_.empty() || own_content_ == "content") {
            own_content_ = std::string{where};
        }
    }
    const std::string& own_content_where() const { return own_content_; }

    std::string finish() {
        if (reason_.empty() && !c_.template_ids.empty() && recipients_ > 0 && !own_content_.empty()) {
            reason_ = "this send carries content of its own (" + own_content_ +
                      "); this agent may send only its templates";
        }
        if (reason_.empty() && c_.max_recipients && recipients_ > *c_.max_recipients) {
            reason_ = std::to_string(recipients_) + " recipients in one request; this agent may address at most " +
                      std::to_string(*c_.max_recipients);
        }
        // An agent held to templates sends only templates: a send (a body with recipients)
        // that names none carries content of its own (SES Content.Simple or an inline
        // TemplateContent, SendGrid content, Mailgun html), which no allow list reviewed.
        if (reason_.empty() && !c_.template_ids.empty() && recipients_ > 0 && templates_ == 0) {
            reason_ = "this send names no template; this agent may send only its templates";
        }
        return std::move(reason_);
    }

private:
    // Each address of a list (a from, a reply-to: `what`) by its domain, as the guards spell
    // it: the first whose domain is not `allowed` fails the check. `need_one`: a list with no
    // address fails too.
    template <class Allowed>
    void each_domain(std::string_view list, std::string_view what, bool need_one, Allowed&& allowed) {
        s_.items.clear();
        if (!split_addresses(list, s_.items)) {
            fail("the " + std::string{what} + " address is not one that reads one way only");
            return;
        }
        if (need_one && s_.items.empty()) {
            fail("the " + std::string{what} + " address has no domain");
            return;
        }
        for (const auto item : s_.items) {
            detail::normalize_address(item, s_.addr);
            const auto at = s_.addr.rfind('@');
            if (at == std::string::npos || at + 1 == s_.addr.size()) {
                fail("the " + std::string{what} + " address has no domain");
                return;
            }
            const std::string_view domain = std::string_view{s_.addr}.substr(at + 1);
            if (!allowed(domain)) {
                fail(std::string{what} + " domain " + shown(domain) + " is not allowed for this agent");
                return;
            }
        }
    }

    const body_constraints& c_;
    scratch& s_;
    std::uint64_t recipients_ = 0;
    std::uint64_t templates_ = 0;  // template ids named, allowed or not
    std::string own_content_;      // the first field of content of its own (own_content)
    std::string mailgun_domain_;   // a Mailgun send's sending domain (the path's), Unicode form
    std::string reason_;
};

// ---------------------------------------------------------------------------------------
// JSON bodies. Keys match case-insensitively (as Go's encoding/json folds them,
// core/json_key.hpp) and every duplicate is visited: upstream parsers differ on case and on
// which duplicate wins, so the check covers all of them.

// Whether object `e` gives `key` spelled exactly so (a reader that matches keys with case,
// Jackson's default, sees no other spelling), every copy of it naming someone: a string with
// more than blanks, or a list with at least one such string. Null, "", [], [""], an object
// (not HubSpot's shape) name nobody, and a single send then takes the stored email's.
bool gives_exactly(element e, std::string_view key) {
    simdjson::dom::object obj;
    if (e.get(obj) != simdjson::SUCCESS) {
        return false;
    }
    auto names = [](element v) {
        std::string_view text;
        return v.get(text) == simdjson::SUCCESS && text.find_first_not_of(" \t\r\n") != std::string_view::npos;
    };
    bool given = false;
    for (const auto field : obj) {
        if (field.key != key) {
            continue;
        }
        simdjson::dom::array list;
        bool someone = names(field.value);
        if (!someone && field.value.get(list) == simdjson::SUCCESS) {
            for (const element item : list) {
                someone = someone || names(item);
            }
        }
        if (!someone) {
            return false;
        }
        given = true;
    }
    return given;
}

template <class F>
void each_field(element e, std::string_view key, F&& f) {
    simdjson::dom::object obj;
    if (e.get(obj) != simdjson::SUCCESS) {
        return;
    }
    for (const auto field : obj) {
        if (json_key::equal_fold(field.key, key)) {
            f(field.value);
        }
    }
}

template <class F>
void each_item(element e, F&& f) {
    simdjson::dom::array arr;
    if (e.get(arr) != simdjson::SUCCESS) {
        return;
    }
    for (const auto item : arr) {
        f(item);
    }
}

// to/cc/bcc: an array of addresses (strings or {"email": ...} objects) or one string.
// Anything else that is not null counts as one recipient (fail closed).
void count_recipients(checker& k, element v) {
    std::string_view s;
    if (v.get(s) == simdjson::SUCCESS) {
        k.add_recipient_list(s);
        return;
    }
    if (v.is_null()) {
        return;
    }
    if (v.type() != element_type::ARRAY) {
        k.add_recipients(1);
        return;
    }
    each_item(v, [&](element item) {
        std::string_view text;
        if (item.get(text) == simdjson::SUCCESS) {
            k.add_recipient_list(text);
        } else if (!item.is_null()) {
            k.add_recipients(1);
            // {"email": ...} (SendGrid, HubSpot): read for mailing lists.
            each_field(item, "email", [&](element e) {
                if (std::string_view a; e.get(a) == simdjson::SUCCESS) {
                    k.list_address(a);
                }
            });
        }
    });
}

void from_value(checker& k, element v) {
    if (!k.checks_from() || v.is_null()) {
        return;
    }
    std::string_view s;
    if (v.get(s) == simdjson::SUCCESS) {
        k.from(s);
    } else if (v.type() == element_type::OBJECT) {
        each_field(v, "email", [&](element e) { from_value(k, e); });
    } else {
        k.fail("the from address is not a string");
    }
}

// SendGrid `reply_to` ({"email": ...}) and `reply_to_list` ([{"email": ...}]), SES
// `ReplyToAddresses` (strings), HubSpot `replyTo` (strings), a Reply-To header's value.
void reply_to_value(checker& k, element v) {
    if (!k.checks_reply_to() || v.is_null()) {
        return;
    }
    std::string_view s;
    if (v.get(s) == simdjson::SUCCESS) {
        k.reply_to(s);
    } else if (v.type() == element_type::OBJECT) {
        each_field(v, "email", [&](element e) { reply_to_value(k, e); });
    } else if (v.type() == element_type::ARRAY) {
        each_item(v, [&](element e) { reply_to_value(k, e); });
    } else {
        k.fail("the reply-to address is not a string");
    }
}

void template_value(checker& k, element v, bool arn) {
    if (!k.checks_template() || v.is_null()) {
        return;
    }
    std::string_view s;
    std::int64_t i = 0;
    std::uint64_t u = 0;
    if (v.get(s) == simdjson::SUCCESS) {
        k.template_id(s, arn);
    } else if (v.get(i) == simdjson::SUCCESS) {
        k.template_id(std::to_string(i), false);  // HubSpot emailId
    } else if (v.get(u) == simdjson::SUCCESS) {
        k.template_id(std::to_string(u), false);
    } else {
        k.fail("the template id is not a string");
    }
}

void recipient_fields(checker& k, element parent, std::initializer_list<std::string_view> keys) {
    for (const auto key : keys) {
        each_field(parent, key, [&](element v) { count_recipients(k, v); });
    }
}

// A sender set as a header (SendGrid `headers: {"Sender": ...}`; SES v2 `Headers: [{"Name":
// "From", "Value": ...}]`): the mail goes out with it, so it is checked as `from` is.
// A Reply-To header is checked as `reply_to` is.
bool sender_header(std::string_view name) {
    return iequals(name, "From") || iequals(name, "Sender");
}
void header_object(checker& k, element headers) {
    simdjson::dom::object obj;
    if ((!k.checks_from() && !k.checks_reply_to()) || headers.get(obj) != simdjson::SUCCESS) {
        return;
    }
    for (const auto field : obj) {
        if (sender_header(field.key)) {
            from_value(k, field.value);
        } else if (iequals(field.key, "Reply-To")) {
            reply_to_value(k, field.value);
        }
    }
}
void header_list(checker& k, element headers) {
    each_item(headers, [&](element h) {
        bool sender = false;
        bool reply = false;
        each_field(h, "Name", [&](element n) {
            std::string_view name;
            if (n.get(name) == simdjson::SUCCESS) {
                sender = sender || sender_header(name);
                reply = reply || iequals(name, "Reply-To");
            }
        });
        if (sender) {
            each_field(h, "Value", [&](element v) { from_value(k, v); });
        }
        if (reply) {
            each_field(h, "Value", [&](element v) { reply_to_value(k, v); });
        }
    });
}

// A raw message's From and Sender, and its Reply-To.
void raw_senders(checker& k, std::string_view message) {
    if (k.checks_from()) {
        k.from(mime_from(message));
    }
    if (k.checks_reply_to()) {
        if (const auto reply = mime_reply_to(message); !reply) {
            k.fail("a raw MIME message's Reply-To cannot be read for certain");
        } else if (!reply->empty()) {
            k.reply_to(*reply);
        }
    }
}

void walk_json(checker& k, element root) {
    // SendGrid v3 mail/send.
    each_field(root, "personalizations", [&](element list) {
        each_item(list, [&](element p) {
            recipient_fields(k, p, {"to", "cc", "bcc"});
            each_field(p, "from", [&](element v) { from_value(k, v); });
            each_field(p, "headers", [&](element h) { header_object(k, h); });
        });
    });
    each_field(root, "from", [&](element v) { from_value(k, v); });
    each_field(root, "reply_to", [&](element v) { reply_to_value(k, v); });
    each_field(root, "reply_to_list", [&](element v) { reply_to_value(k, v); });
    each_field(root, "headers", [&](element h) { header_object(k, h); });
    bool legacy_template = false;
    each_field(root, "template_id", [&](element v) {
        std::string_view id;
        legacy_template = legacy_template || (v.get(id) == simdjson::SUCCESS && !id.starts_with("d-"));
        template_value(k, v, false);
    });
    // A legacy template (an id without `d-`) takes `content` into its <%body%>: the agent's
    // own words in a reviewed template's frame. (A dynamic template's own content overrides
    // it.) A blank value, which clients sent because SendGrid once required content, is none.
    if (legacy_template) {
        each_field(root, "content", [&](element v) {
            // (An object is SES's Content, read below.)
            each_item(v, [&](element part) {
                bool blank = part.is_object();
                each_field(part, "value", [&](element value) {
                    std::string_view text;
                    blank = blank && value.get(text) == simdjson::SUCCESS &&
                            text.find_first_not_of(" \t\r\n") == std::string_view::npos;
                });
                if (!blank) {
                    k.own_content("content");
                }
            });
        });
    }

    // SES v2 SendEmail and SendBulkEmail.
    const auto destination = [&](element d) {
        recipient_fields(k, d, {"ToAddresses", "CcAddresses", "BccAddresses"});
    };
    const std::uint64_t before_destination = k.recipients();
    each_field(root, "Destination", destination);
    const std::uint64_t destination_count = k.recipients() - before_destination;
    each_field(root, "BulkEmailEntries", [&](element list) {
        each_item(list, [&](element entry) {
            each_field(entry, "Destination", destination);
            each_field(entry, "ReplacementHeaders", [&](element h) { header_list(k, h); });
        });
    });
    each_field(root, "FromEmailAddress", [&](element v) { from_value(k, v); });
    each_field(root, "ReplyToAddresses", [&](element v) { reply_to_value(k, v); });
    // A raw message (SES v2 Content.Raw.Data): SES sends it to its own To/Cc/Bcc headers when
    // no Destination is given, else to the Destination only; from its From header. Counted as
    // the larger of the two, as SES v1's (v1 SendRawEmail is a form post: walk_form).
    std::uint64_t raw_count = 0;
    const auto raw_message = [&](element data) {
        std::string_view b64;
        std::string message;
        std::string scratch;
        std::vector<std::string_view> to;
        if (data.get(b64) != simdjson::SUCCESS || !decode_base64(b64, message) ||
            !mime_recipients(message, scratch, to)) {
            k.fail("a raw MIME message is not base64 or not a message");
            return;
        }
        raw_count += to.size();
        raw_senders(k, message);
        for (const auto a : to) {
            k.list_address(a);
        }
    };
    for (const auto content : {"Content", "DefaultContent"}) {
        each_field(root, content, [&](element c) {
            each_field(c, "Raw", [&](element r) {
                k.own_content(std::string{content} + ".Raw");
                each_field(r, "Data", raw_message);
            });
            each_field(c, "Simple", [&](element s) {
                k.own_content(std::string{content} + ".Simple");
                each_field(s, "Headers", [&](element h) { header_list(k, h); });
            });
            each_field(c, "Template", [&](element t) {
                each_field(t, "TemplateName", [&](element v) { template_value(k, v, false); });
                each_field(t, "TemplateArn", [&](element v) { template_value(k, v, true); });
                each_field(t, "TemplateContent", [&](element) {
                    k.own_content(std::string{content} + ".Template.TemplateContent");
                });
                each_field(t, "Headers", [&](element h) { header_list(k, h); });
            });
        });
    }
    k.add_recipients(raw_count > destination_count ? raw_count - destination_count : 0);

    // Salesforce's Send Email action (POST .../actions/standard/emailSimple, and the Flow
    // actions that take the same inputs): each input is one mail to its addresses (a
    // comma-separated string and/or an array) and its recipientId, from senderAddress, with
    // its own subject and body unless it names an emailTemplateId. (HubSpot's batch `inputs`
    // carry none of these keys.)
    each_field(root, "inputs", [&](element list) {
        each_item(list, [&](element in) {
            // (The cc and bcc lists and collections came with API v64.0.)
            for (const auto key : {"emailAddresses", "emailAddressesArray", "ccRecipientAddressList",
                                   "ccRecipientAddressCollection", "bccRecipientAddressList",
                                   "bccRecipientAddressCollection"}) {
                each_field(in, key, [&](element v) { count_recipients(k, v); });
            }
            each_field(in, "recipientId", [&](element v) {
                if (!v.is_null()) {
                    k.add_recipients(1);
                }
            });
            each_field(in, "senderAddress", [&](element v) { from_value(k, v); });
            bool templated = false;
            each_field(in, "emailTemplateId", [&](element v) {
                templated = templated || !v.is_null();
                template_value(k, v, false);
            });
            if (!templated) {
                each_field(in, "emailBody", [&](element) { k.own_content("inputs[].emailBody"); });
            }
        });
    });

    // SendGrid Marketing single sends (POST /v3/marketing/singlesends, a PATCH of one): their
    // audience is lists and segments (or every contact), whose size no count here can read.
    // To an agent held to max_recipients they are refused, not counted as none.
    if (k.checks_count()) {
        each_field(root, "send_to", [&](element to) {
            bool audience = false;
            for (const auto key : {"list_ids", "segment_ids"}) {
                each_field(to, key, [&](element ids) {
                    simdjson::dom::array a;
                    audience = audience || (!ids.is_null() && (ids.get(a) != simdjson::SUCCESS || a.size() > 0));
                });
            }
            each_field(to, "all", [&](element all) {
                bool b = false;
                audience = audience || (!all.is_null() && (all.get(b) != simdjson::SUCCESS || b));
            });
            if (audience) {
                k.fail("this send goes to lists or segments (send_to), whose size this agent's max_recipients cannot "
                       "count");
            }
        });
    }

    // HubSpot single send (marketing/v3/transactional/single-email/send).
    bool from = true;      // every copy of `message` gives its own from (gives_exactly)
    bool reply_to = true;  // ... and replyTo
    bool message = false;
    each_field(root, "message", [&](element m) {
        recipient_fields(k, m, {"to", "cc", "bcc"});
        each_field(m, "from", [&](element v) { from_value(k, v); });
        each_field(m, "replyTo", [&](element v) { reply_to_value(k, v); });
        message = true;
        from = from && gives_exactly(m, "from");
        reply_to = reply_to && gives_exactly(m, "replyTo");
    });
    from = from && message;
    reply_to = reply_to && message;
    bool single_send = false;
    each_field(root, "emailId", [&](element v) {
        single_send = single_send || !v.is_null();
        template_value(k, v, false);
    });
    // Without message.from (or replyTo) HubSpot sends with the stored marketing email's,
    // which no body shows: to an agent held to those domains that is refused, not taken as
    // no sender (as SendGrid's stored sender_id is).
    if (single_send && !from && k.checks_from()) {
        k.fail("this single send takes its from address from the stored marketing email (emailId), which this "
               "agent's from_domains cannot read; give message.from");
    }
    if (single_send && !reply_to && k.checks_reply_to()) {
        k.fail("this single send takes its reply-to from the stored marketing email (emailId), which this "
               "agent's reply_to_domains cannot read; give message.replyTo");
    }
}

// ---------------------------------------------------------------------------------------
// Form bodies (Mailgun): repeated fields, each value possibly a comma-separated list.

// A raw message posted in a form field: base64 (SES v1 RawMessage.Data) or as written
// (Mailgun messages.mime), as the API reads it. Returns its To/Cc/Bcc count; checks its From.
std::size_t raw_form_message(checker& k, std::string_view value, bool base64) {
    std::string decoded;
    std::string scratch;
    std::vector<std::string_view> to;
    const auto read = form_field_message(value, base64, decoded);
    if (!read) {
        k.fail("a raw MIME message is not base64");
        return 0;
    }
    const std::string_view message = *read;
    if (!mime_recipients(message, scratch, to)) {
        k.fail("a raw MIME message is not a message whose recipients can be read for certain");
        return 0;
    }
    raw_senders(k, message);
    for (const auto a : to) {
        k.list_address(a);
    }
    return to.size();
}

// SES v1 (Query API) names; a list member is `<prefix><number>`. In any case, as the meter
// and the guards read form names (form_name_matches): a server that folds case must not
// find recipients here that the agent's limit never counted.
bool list_member(std::string_view name, std::string_view prefix) {
    return name.size() > prefix.size() && iequals(name.substr(0, prefix.size()), prefix) &&
           std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                       [](char c) { return c >= '0' && c <= '9'; });
}

// SendEmail: Destination.{To,Cc,Bcc}Addresses.member.N.
bool destination_address(std::string_view name) {
    return list_member(name, "Destination.ToAddresses.member.") || list_member(name, "Destination.CcAddresses.member.") ||
           list_member(name, "Destination.BccAddresses.member.");
}

// SendBulkTemplatedEmail: Destinations.member.N.Destination.{To,Cc,Bcc}Addresses.member.M.
bool bulk_destination(std::string_view name) {
    constexpr std::string_view head = "Destinations.member.";
    if (name.size() < head.size() || !iequals(name.substr(0, head.size()), head)) {
        return false;
    }
    std::size_t i = head.size();
    const std::size_t digits = i;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9') {
        ++i;
    }
    if (i == digits) {
        return false;
    }
    return i < name.size() && name[i] == '.' && destination_address(name.substr(i + 1));
}

void walk_form(checker& k, const std::vector<std::pair<std::string, std::string>>& fields) {
    // SES v1: SendEmail's Destination.{To,Cc,Bcc}Addresses.member.N and SendRawEmail's
    // Destinations.member.N are one address each; Source is the sender. A raw message counts
    // the larger of its Destinations and its own To/Cc/Bcc (SES sends to the former when
    // given, to the latter otherwise: the larger is never an undercount).
    std::uint64_t destinations = 0;
    std::uint64_t raw_recipients = 0;
    for (const auto& [name, value] : fields) {
        if (list_member(name, "Destinations.member.")) {
            destinations += k.recipient_list_size(value);  // a list, as the meter splits it
            k.list_items();
        } else if (iequals(name, "to") || iequals(name, "cc") || iequals(name, "bcc") || iequals(name, "to[]") ||
                   iequals(name, "cc[]") || iequals(name, "bcc[]") || destination_address(name) ||
                   bulk_destination(name)) {
            // (`to[]`: SendGrid's v2 mail.send.json, a form post with repeated array fields.)
            k.add_recipient_list(value);
        } else if (iequals(name, "from") || iequals(name, "Source") || iequals(name, "h:From") ||
                   iequals(name, "h:Sender")) {
            k.from(value);  // (Mailgun's h: fields are headers of the mail it sends)
        } else if (iequals(name, "headers")) {
            // SendGrid v2: a JSON object of headers, a From, Sender or Reply-To among them.
            simdjson::dom::element headers;
            if (k.checks_from() || k.checks_reply_to()) {
                if (local().parser.parse(value.data(), value.size()).get(headers) != simdjson::SUCCESS ||
                    !headers.is_object()) {
                    k.fail("the headers field (SendGrid v2) is not a JSON object");
                } else {
                    header_object(k, headers);
                }
            }
        } else if (iequals(name, "h:Reply-To") || iequals(name, "replyto") ||
                   list_member(name, "ReplyToAddresses.member.")) {
            k.reply_to(value);  // Mailgun, SendGrid v2, SES v1
        } else if (iequals(name, "template")) {
            k.template_id(value, false);
        } else if (iequals(name, "TemplateArn")) {
            k.template_id(value, true);  // SES v1 SendTemplatedEmail, beside or instead of Template
        } else if (iequals(name, "x-smtpapi")) {
            // SendGrid v2's JSON header: recipients, substitutions and template filters of its
            // own, read by no check here.
            k.fail("the x-smtpapi field (SendGrid v2) is not read by this agent's constraints; send through "
                   "/v3/mail/send");
        } else if (iequals(name, "RawMessage.Data")) {
            k.own_content("RawMessage.Data");
            raw_recipients += raw_form_message(k, value, true);
        } else if (iequals(name, "message")) {
            k.own_content("message");
            raw_form_message(k, value, false);  // Mailgun sends to its `to` field, counted above
        } else if (name.size() > 8 && iequals(std::string_view{name}.substr(0, 8), "Message.")) {
            k.own_content(name);  // SES v1 SendEmail's Message.Subject.Data, Message.Body.*.Data
        }
    }
    k.add_recipients(std::max(destinations, raw_recipients));
}

// Mailgun's send resources, /v3/{domain}/messages and /v3/{domain}/messages.mime (any case,
// one trailing slash, read percent-decoded as a Go router reads a path): the domain; nullopt
// for any other path.
std::optional<std::string> mailgun_sending_domain(std::string_view raw_path) {
    constexpr std::string_view head = "/v3/";
    if (raw_path.size() <= head.size()) {
        return std::nullopt;
    }
    std::string decoded;
    url_decode(raw_path, decoded, false);
    const std::string_view path = decoded;
    if (path.size() <= head.size() || !iequals(path.substr(0, head.size()), head)) {
        return std::nullopt;
    }
    std::string_view rest = path.substr(head.size());
    const auto slash = rest.find('/');
    if (slash == std::string_view::npos) {
        return std::nullopt;
    }
    std::string_view tail = rest.substr(slash);
    if (tail.size() > 1 && tail.back() == '/') {
        tail.remove_suffix(1);
    }
    if (!iequals(tail, "/messages") && !iequals(tail, "/messages.mime")) {
        return std::nullopt;
    }
    return std::string{rest.substr(0, slash)};
}

// The path's segments, percent-decoded, without one trailing empty one: how the last `n`
// read (any case) against `want` ("*" for any one segment). Matched from the end so that an
// upstream's base path in front changes nothing.
bool path_ends_with(std::string_view raw_path, std::initializer_list<std::string_view> want) {
    std::string decoded;
    url_decode(raw_path, decoded, false);
    std::string_view path = decoded;
    if (path.size() > 1 && path.back() == '/') {
        path.remove_suffix(1);
    }
    auto it = std::rbegin(want);
    for (; it != std::rend(want); ++it) {
        const auto slash = path.rfind('/');
        if (slash == std::string_view::npos) {
            return false;
        }
        const std::string_view seg = path.substr(slash + 1);
        if (seg.empty() || (*it != "*" && !iequals(seg, *it))) {
            return false;
        }
        path = path.substr(0, slash);
    }
    return true;
}

// A call that sends mail stored upstream (with its lists, sender and content), which no body
// shows: scheduling a SendGrid Single Send (PUT /v3/marketing/singlesends/{id}/schedule) or
// legacy campaign (POST or PATCH /v3/campaigns/{id}/schedules, POST .../schedules/now), a
// campaign's test send (POST .../schedules/test, from the campaign's stored sender), or
// publishing a HubSpot marketing email (POST /marketing/v3/emails/{id}/publish). What it is,
// or "" for any other call. Reading or deleting a schedule sends nothing. An empty method
// counts as one that may send.
std::string_view stored_send(std::string_view method, std::string_view path) {
    if (iequals(method, "GET") || iequals(method, "HEAD") || iequals(method, "DELETE") || iequals(method, "OPTIONS")) {
        return {};
    }
    if (path_ends_with(path, {"marketing", "singlesends", "*", "schedule"})) {
        return "schedules a stored Single Send";
    }
    if (path_ends_with(path, {"campaigns", "*", "schedules"}) ||
        path_ends_with(path, {"campaigns", "*", "schedules", "now"})) {
        return "sends a stored campaign";
    }
    if (path_ends_with(path, {"campaigns", "*", "schedules", "test"})) {
        return "sends a stored campaign as a test";
    }
    if (path_ends_with(path, {"marketing", "v3", "emails", "*", "publish"})) {
        return "publishes a stored HubSpot marketing email";
    }
    if (path_ends_with(path, {"actions", "custom", "emailAlert", "*", "*"})) {
        return "sends a stored Salesforce email alert (its template, sender and recipients)";
    }
    return {};
}

// SendGrid's Marketing test send (POST /v3/marketing/test/send_email): up to ten addresses in
// `emails`, from `from_address` or a stored sender named by `sender_id` (its template_id is
// read with the other APIs' template ids). A stored sender's address is not in the body: to an
// agent held to from or reply-to domains it is refused, not taken as no sender.
void sendgrid_test_send(checker& k, element root) {
    each_field(root, "emails", [&](element v) { count_recipients(k, v); });
    each_field(root, "from_address", [&](element v) { from_value(k, v); });
    if (k.checks_from() || k.checks_reply_to()) {
        each_field(root, "sender_id", [&](element v) {
            if (!v.is_null()) {
                k.fail("this test send names a stored sender (sender_id), whose from and reply-to addresses this "
                       "agent's domains cannot read; give from_address instead");
            }
        });
    }
}

}  // namespace

namespace {

constexpr std::string_view no_body = "(no body)";

// Reads what the body (and a form API's query string) says into `k`: "" when read, why not
// otherwise, or no_body when there is none.
std::string read_body(checker& k, scratch& s, std::string_view content_type, std::string_view body,
                      std::string_view query, std::string_view path) {
    const bool form = reads_as_form(content_type, body, query);  // a BOM alone is no body there either
    // Past a byte order mark, as the meter and the guards read a JSON body (and Jackson).
    const std::string_view json = without_bom(body);
    const auto first = json.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos && !form) {
        return std::string{no_body};  // no recipient, no from, no template
    }
    if (auto why = unreadable_form(content_type, body, query); !why.empty()) {
        return why;
    }
    if (const auto domain = mailgun_sending_domain(path)) {
        k.sending_domain(*domain);
    }
    if (first != std::string_view::npos &&
        (mentions_json(content_type) || (!form && (json[first] == '{' || json[first] == '[')))) {
        element root;
        cfg::release_if_grown(s.parser, json.size());  // (the top-level parse of a check)
        if (s.parser.parse(json.data(), json.size()).get(root) != simdjson::SUCCESS) {
            return "the body is not valid JSON";
        }
        walk_json(k, root);
        if (path_ends_with(path, {"marketing", "test", "send_email"})) {
            sendgrid_test_send(k, root);
        }
    } else if (form) {
        if (!parse_form_fields(content_type, body, query, s.form)) {
            return "the multipart/form-data body is malformed";
        }
        walk_form(k, s.form);
    }
    if (!form && !query.empty()) {
        // A form API may merge the query's fields whatever the body is (Go's FormValue, the
        // AWS Query API): `?to=...&from=...` beside a JSON or text body counts too.
        parse_form({}, query, s.form);  // urlencoded
        walk_form(k, s.form);
    }
    return {};
}

}  // namespace

std::string check_body_constraints(const body_constraints& c, std::string_view content_type, std::string_view body,
                                   std::string_view query, std::string_view path, std::string_view method) {
    if (c.empty()) {
        return {};
    }
    if (const auto what = stored_send(method, path); !what.empty()) {
        // Whatever the body says (`{"send_at": "now"}`): the mail's recipients, sender and
        // template are the stored ones.
        return "this request " + std::string{what} +
               ", whose recipients, sender and content this agent's constraints cannot read";
    }
    // No type and not JSON: Rack (and so Rails and Sinatra) reads such a POST body as a form,
    // where `from=...&to=...` would be a send this check never saw. (Untyped JSON is read as
    // JSON, as the APIs in front of which breakerbox stands read it.)
    const std::string_view text = without_bom(body);
    if (const auto first = text.find_first_not_of(" \t\r\n");
        content_type.find_first_not_of(" \t") == std::string_view::npos && first != std::string_view::npos &&
        text[first] != '{' && text[first] != '[') {
        return "a body without a Content-Type is read as a form by some servers (Rack) and as nothing here: send it "
               "with its type";
    }
    scratch& s = local();
    checker k{c, s};
    if (auto why = read_body(k, s, content_type, body, query, path); !why.empty()) {
        return why == no_body ? std::string{} : why;
    }
    return k.finish();
}

std::string own_content_field(std::string_view content_type, std::string_view body, std::string_view query,
                              std::string_view path) {
    static const body_constraints none;
    scratch& s = local();
    checker k{none, s};
    if (auto why = read_body(k, s, content_type, body, query, path); !why.empty()) {
        return why == no_body ? std::string{} : "(a body that cannot be read: " + why + ")";
    }
    return k.own_content_where();
}

std::string_view without_format_suffix(std::string_view path) {
    for (const std::string_view ext : {".json", ".xml"}) {
        if (path.size() > ext.size() && iequals(path.substr(path.size() - ext.size()), ext)) {
            return path.substr(0, path.size() - ext.size());
        }
    }
    return path;
}

namespace {

// Whether `head` ("/services/data/v") starts a segment of `path`, followed by a version
// (digits and dots) for which rest_ok(at, version, rest) holds, `rest` being the path after
// the version. Anywhere in the path: an upstream's base path may come before it (an
// Experience Cloud site's `/partners/services/data/...`).
template <class RestOk>
bool find_versioned(std::string_view path, std::string_view head, RestOk&& rest_ok) {
    for (std::size_t at = 0; at + head.size() <= path.size(); ++at) {
        if (path[at] != '/' || !iequals(path.substr(at, head.size()), head)) {
            continue;
        }
        std::size_t i = at + head.size();
        const std::size_t version = i;
        while (i < path.size() && ((path[i] >= '0' && path[i] <= '9') || path[i] == '.')) {
            ++i;
        }
        if (i > version && rest_ok(at, path.substr(version, i - version), path.substr(i))) {
            return true;
        }
    }
    return false;
}

// /services/data/vNN.N/composite, its /batch or its /graph (any case, one trailing slash,
// a format suffix): the resources whose POST body carries requests of their own.
bool salesforce_composite_path(std::string_view path) {
    return find_versioned(path, "/services/data/v", [](std::size_t, std::string_view, std::string_view rest) {
        if (rest.size() > 1 && rest.back() == '/') {
            rest.remove_suffix(1);
        }
        rest = without_format_suffix(rest);  // (after the slash, as the presets' paths read it)
        for (const std::string_view r : {"/composite", "/composite/batch", "/composite/graph", "/tooling/composite",
                                         "/tooling/composite/batch", "/connect/batch"}) {
            if (iequals(rest, r)) {
                return true;
            }
        }
        return false;
    });
}

// Whether every `@{...}` reference in a subrequest's URL names a record's id (`@{a.id}`,
// `@{q.records[0].Id}`): what Salesforce pastes in for it then has no '/', '&', '=' or '?'.
bool only_id_references(std::string_view url) {
    for (auto at = url.find("@{"); at != std::string_view::npos; at = url.find("@{", at + 2)) {
        const auto close = url.find('}', at + 2);
        if (close == std::string_view::npos) {
            return false;
        }
        const std::string_view ref = url.substr(at + 2, close - at - 2);
        if (ref.size() < 4 || !iequals(ref.substr(ref.size() - 3), ".id") ||
            ref.find_first_of("{@/?&=#% ") != std::string_view::npos) {
            return false;
        }
    }
    return true;
}

// The subrequests of one array (compositeRequest or batchRequests); false if it does not
// read as one (a wrong type, a subrequest without a string method and url).
bool read_subrequests(element list, std::vector<subrequest>& out) {
    simdjson::dom::array a;
    if (list.get(a) != simdjson::SUCCESS) {
        return false;
    }
    for (element item : a) {
        simdjson::dom::object o;
        if (item.get(o) != simdjson::SUCCESS) {
            return false;
        }
        std::vector<std::string_view> methods;
        std::vector<std::string_view> urls;
        for (auto f : o) {
            if (iequals(f.key, "httpHeaders")) {
                simdjson::dom::object headers;
                if (f.value.get(headers) != simdjson::SUCCESS) {
                    return false;
                }
                for (auto h : headers) {
                    if (is_method_override_header(h.key)) {
                        subrequest r;
                        r.refused = "a subrequest header " + std::string{h.key.substr(0, 32)} + " asking for another method";
                        out.push_back(std::move(r));
                    }
                }
                continue;
            }
            const bool is_method = iequals(f.key, "method");
            if (!is_method && !iequals(f.key, "url")) {
                continue;
            }
            std::string_view v;
            if (f.value.get(v) != simdjson::SUCCESS) {
                return false;
            }
            (is_method ? methods : urls).push_back(v);
        }
        if (methods.empty() || urls.empty()) {
            return false;
        }
        // Every spelling a reader might take (duplicate keys): each pair is checked.
        for (const auto m : methods) {
            for (const auto u : urls) {
                subrequest r;
                r.method.assign(m);
                std::transform(r.method.begin(), r.method.end(), r.method.begin(),
                               [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
                const auto q = u.find('?');
                std::string_view p = u.substr(0, q);
                // batchRequests name theirs relative to /services/data/ ("v59.0/sobjects/..."),
                // Connect's batch as "/v59.0/chatter/...".
                r.path = p.starts_with("/v") && p.size() > 2 && p[2] >= '0' && p[2] <= '9' ? "/services/data" + std::string{p}
                         : p.starts_with('/')                                              ? std::string{p}
                                                                                           : "/services/data/" + std::string{p};
                if (q != std::string_view::npos) {
                    if (const auto name = method_override_name(u.substr(q + 1), "&;#"); !name.empty()) {
                        r.refused = "a subrequest query field " + std::string{name.substr(0, 32)} +
                                    " asking for another method";
                    }
                    // A field whose name is a reference (`?@{b.Name}=DELETE`) may be filled in
                    // as _HttpMethod after it was judged; a reference in a value may stay.
                    for (std::string_view rest = u.substr(q + 1); !rest.empty() && r.refused.empty();) {
                        const auto amp = rest.find_first_of("&;#");
                        const std::string_view field = rest.substr(0, amp);
                        if (field.substr(0, field.find('=')).find("@{") != std::string_view::npos) {
                            r.refused = "a subrequest query field named by a reference (" +
                                        std::string{field.substr(0, 64)} + "), which may ask for another method";
                        }
                        rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
                    }
                }
                r.references_ok = only_id_references(u);
                out.push_back(std::move(r));
            }
        }
    }
    return true;
}

}  // namespace

namespace {

// Whether every `@{` reference in a subrequest's path is a whole segment where a record's id
// goes: right after `/sobjects/{Type}/`, or after `/sobjects/{Type}/{ExternalIdField}/`
// (none at all: true). `/sobjects/Case/quickActions/@{a.name}` picks an action: refused.
bool reference_only_in_record_place(std::string_view path) {
    if (path.find("@{") == std::string_view::npos) {
        return true;
    }
    constexpr std::string_view sobjects = "/sobjects/";
    std::size_t at = std::string_view::npos;
    for (std::size_t i = 0; i + sobjects.size() <= path.size(); ++i) {
        if (iequals(path.substr(i, sobjects.size()), sobjects)) {
            at = i + sobjects.size();
            break;
        }
    }
    if (at == std::string_view::npos || path.substr(0, at).find("@{") != std::string_view::npos) {
        return false;
    }
    // The segments after /sobjects/: [0] the type, [1] an id or an external id field, [2] the
    // external id's value after a custom field written out (`Ext_Id__c`; after anything else,
    // `quickActions` say, a reference would pick the resource), or what the record holds.
    std::size_t index = 0;
    bool id_referenced = false;
    bool external_id_field = false;
    for (std::size_t start = at; start <= path.size(); ++index) {
        const auto slash = path.find('/', start);
        const std::string_view seg = path.substr(start, slash == std::string_view::npos ? path.size() - start : slash - start);
        if (seg.find("@{") != std::string_view::npos) {
            if (index < 1 || index > 2 || (index == 2 && (id_referenced || !external_id_field)) || !seg.starts_with("@{") ||
                !seg.ends_with('}') || seg.find_first_of("{}", 2) != seg.size() - 1) {
                return false;
            }
            id_referenced = true;
        } else if (index == 1) {
            external_id_field = seg.size() > 3 && iequals(seg.substr(seg.size() - 3), "__c");
        }
        if (slash == std::string_view::npos) {
            break;
        }
        start = slash + 1;
    }
    return true;
}

}  // namespace

std::string salesforce_subrequests(std::string_view path, std::string_view body, std::vector<subrequest>& out) {
    out.clear();
    if (!salesforce_composite_path(path)) {
        return {};
    }
    constexpr const char* unreadable = "the composite request's subrequests cannot be read (the body is not JSON "
                                       "with method and url strings)";
    body = without_bom(body);  // as Salesforce's JSON reader (Jackson) reads past it
    scratch& s = local();
    element root;
    cfg::release_if_grown(s.parser, body.size());  // (the top-level parse of a check)
    if (s.parser.parse(body.data(), body.size()).get(root) != simdjson::SUCCESS) {
        return unreadable;
    }
    simdjson::dom::object top;
    if (root.get(top) != simdjson::SUCCESS) {
        return unreadable;
    }
    for (auto f : top) {
        if (iequals(f.key, "compositeRequest") || iequals(f.key, "batchRequests")) {
            if (!read_subrequests(f.value, out)) {
                return unreadable;
            }
        } else if (iequals(f.key, "graphs")) {
            simdjson::dom::array graphs;
            if (f.value.get(graphs) != simdjson::SUCCESS) {
                return unreadable;
            }
            for (element g : graphs) {
                simdjson::dom::object go;
                if (g.get(go) != simdjson::SUCCESS) {
                    return unreadable;
                }
                for (auto gf : go) {
                    if (iequals(gf.key, "compositeRequest") && !read_subrequests(gf.value, out)) {
                        return unreadable;
                    }
                }
            }
        }
    }
    for (const auto& r : out) {
        if (!r.refused.empty()) {
            return r.refused + " is not accepted (the allow list judges each subrequest by its method)";
        }
        if (salesforce_composite_path(r.path)) {
            return "a composite request inside a composite request is not accepted";
        }
        // A reference is pasted in as the value it names: only a record's id (`@{a.id}`,
        // `@{q.records[0].Id}`) cannot carry a path, a query field or another method.
        if (!r.references_ok) {
            return "a subrequest URL with a reference to something other than a record id (" + r.path.substr(0, 128) +
                   ": Salesforce pastes in the value, which could name another resource or method) is not accepted";
        }
        // `@{ref.field}` in a URL is filled in by Salesforce from an earlier subrequest's
        // answer, after breakerbox judged the URL as written: `.../actions/standard/@{a.name}`
        // may be emailSimple, or any path the allow list and the rules never saw. Only a
        // record's place is taken (`/sobjects/Contact/@{newContact.id}`, the usual use):
        // what kind of resource it is stays as judged.
        if (!reference_only_in_record_place(r.path)) {
            return "a subrequest URL with a reference outside a record id (" + r.path.substr(0, 128) +
                   ": Salesforce fills it in from another subrequest's answer, after it was judged) is not accepted";
        }
    }
    return {};
}

namespace {

// "59.0" of "/services/data/v59.0/jobs/ingest" (`data` true) or "/services/async/59.0/job",
// and where that part of the path starts: the prefix before it is an upstream's base path.
struct bulk_job_path {
    std::size_t at = std::string_view::npos;
    std::string_view version;
    bool v1 = false;  // Bulk API 1.0's /services/async (its jobs also query)
};
bulk_job_path bulk_job_of(std::string_view path) {
    while (path.size() > 1 && path.back() == '/') {
        path.remove_suffix(1);
    }
    path = without_format_suffix(path);
    bulk_job_path job;
    for (const auto& [head, tail] : {std::pair<std::string_view, std::string_view>{"/services/data/v", "/jobs/ingest"},
                                     {"/services/async/", "/job"}}) {
        if (find_versioned(path, head, [&](std::size_t at, std::string_view version, std::string_view rest) {
                job = {at, version, tail == "/job"};
                return iequals(rest, tail);
            })) {
            return job;
        }
    }
    return {};
}

// Whether a Bulk API 1.0 XML job reads one way only: no comment, CDATA section, DOCTYPE or
// processing instruction past the declaration (`<!--<operation>insert</operation>-->` is no
// element to an XML parser, and would be the only one a text search finds), and every tag
// whose local name is operation or object written plainly, `<operation>`/`</operation>` (a
// parser also takes `<operation >` or `<a:operation>`).
bool plain_xml_job(std::string_view xml) {
    for (auto lt = xml.find('<'); lt != std::string_view::npos; lt = xml.find('<', lt + 1)) {
        const std::string_view rest = xml.substr(lt + 1);
        if (rest.starts_with('!')) {
            return false;
        }
        if (rest.starts_with('?')) {
            if (xml.find_first_not_of(" \t\r\n\xEF\xBB\xBF") != lt || !rest.starts_with("?xml ")) {
                return false;
            }
            continue;
        }
        const std::size_t slash = rest.starts_with('/') ? 1 : 0;
        const auto end = rest.find_first_of(" \t\r\n/>", slash);
        std::string_view name = rest.substr(slash, end == std::string_view::npos ? rest.size() - slash : end - slash);
        const auto colon = name.find(':');
        const std::string_view local = colon == std::string_view::npos ? name : name.substr(colon + 1);
        if ((iequals(local, "operation") || iequals(local, "object")) &&
            (colon != std::string_view::npos || (local != "operation" && local != "object") ||
             end == std::string_view::npos || rest[end] != '>')) {
            return false;
        }
    }
    return true;
}

// The text of the one <name>...</name> element of a Bulk API 1.0 XML job (its jobInfo has
// no nested elements of these names); nullopt when absent or given twice.
std::optional<std::string_view> xml_element(std::string_view xml, std::string_view name) {
    const std::string open = "<" + std::string{name} + ">";
    const std::string close = "</" + std::string{name} + ">";
    const auto start = xml.find(open);
    if (start == std::string_view::npos || xml.find(open, start + 1) != std::string_view::npos) {
        return std::nullopt;
    }
    const auto end = xml.find(close, start + open.size());
    if (end == std::string_view::npos) {
        return std::nullopt;
    }
    std::string_view v = xml.substr(start + open.size(), end - start - open.size());
    while (!v.empty() && (v.front() == ' ' || v.front() == '\n' || v.front() == '\r' || v.front() == '\t')) {
        v.remove_prefix(1);
    }
    while (!v.empty() && (v.back() == ' ' || v.back() == '\n' || v.back() == '\r' || v.back() == '\t')) {
        v.remove_suffix(1);
    }
    return v;
}

}  // namespace

std::string salesforce_bulk_job(std::string_view path, std::string_view content_type, std::string_view body,
                                std::vector<subrequest>& out) {
    const auto job = bulk_job_of(path);
    if (job.at == std::string_view::npos) {
        return {};
    }
    constexpr const char* unreadable =
        "the Bulk API job cannot be read (one operation and one object, in a JSON job, a multipart body's job part "
        "or an XML jobInfo)";
    std::string operation;
    std::string object;
    std::string json;
    body = without_bom(body);
    const auto first = body.find_first_not_of(" \t\r\n");
    const std::string type = lower(content_type.substr(0, content_type.find(';')));
    if (type.find("multipart/") != std::string::npos) {
        std::vector<std::pair<std::string, std::string>> parts;
        if (!parse_form(content_type, body, parts)) {
            return unreadable;
        }
        std::size_t jobs = 0;
        for (const auto& [name, value] : parts) {
            if (name == "job") {
                ++jobs;
                json = value;
            }
        }
        if (jobs != 1) {
            return unreadable;
        }
    } else if (first != std::string_view::npos && body[first] == '<') {
        if (!plain_xml_job(body)) {
            return unreadable;
        }
        const auto op = xml_element(body, "operation");
        const auto obj = xml_element(body, "object");
        if (!op || !obj) {
            return unreadable;
        }
        operation.assign(*op);
        object.assign(*obj);
    } else {
        json.assign(body);
    }
    if (operation.empty() && object.empty()) {
        scratch& s = local();
        element root;
        simdjson::dom::object top;
        if (s.parser.parse(json.data(), json.size()).get(root) != simdjson::SUCCESS || root.get(top) != simdjson::SUCCESS) {
            return unreadable;
        }
        int ops = 0;
        int objs = 0;
        for (auto f : top) {
            const bool is_op = iequals(f.key, "operation");
            if (!is_op && !iequals(f.key, "object")) {
                continue;
            }
            std::string_view v;
            if (f.value.get(v) != simdjson::SUCCESS) {
                return unreadable;
            }
            (is_op ? operation : object).assign(v);
            ++(is_op ? ops : objs);
        }
        if (ops != 1 || objs != 1) {
            return unreadable;
        }
    }
    const std::string op = lower(operation);
    const bool read = job.v1 && (op == "query" || op == "queryall");  // Bulk API 1.0's extracts
    const char* method = op == "insert"                          ? "POST"
                         : op == "update" || op == "upsert"      ? "PATCH"
                         : op == "delete" || op == "harddelete" ? "DELETE"
                         : read                                  ? "GET"
                                                                 : nullptr;
    const bool name_ok = !object.empty() && object.size() <= 80 && std::all_of(object.begin(), object.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    });
    if (method == nullptr || !name_ok) {
        return "the Bulk API job's operation " + operation.substr(0, 32) + " on " + object.substr(0, 80) +
               " is not one an allow list can judge (insert, update, upsert, delete, hardDelete, query or queryAll of "
               "an object)";
    }
    subrequest r;
    r.method = method;
    r.path = std::string{path.substr(0, job.at)} + "/services/data/v" + std::string{job.version} +
             (!read ? "/sobjects/" + object : op == "queryall" ? std::string{"/queryAll"} : std::string{"/query"});
    r.what = "the Bulk API job's operation " + operation;
    out.push_back(std::move(r));
    return {};
}

subrequest_refusal salesforce_subrequest_refusal(std::string_view path, std::string_view body) {
    thread_local std::vector<subrequest> subs;
    const auto unreadable = salesforce_subrequests(path, body, subs);
    for (const auto& r : subs) {
        const std::string why = !r.refused.empty()                  ? r.refused
                                : salesforce_composite_path(r.path) ? "a composite request inside a composite request"
                                                                    : std::string{};
        if (!why.empty()) {
            return {"method_override", why + " is not accepted: delete caps and agent scopes judge each subrequest "
                                             "by its method, so send the method itself"};
        }
    }
    if (unreadable.find("with a reference") != std::string::npos) {
        return {"bad_body", unreadable};
    }
    if (!unreadable.empty()) {
        // JSON that does not read as subrequests throughout (a duplicate key of another type,
        // a null httpHeaders): what was read up to there is not all there is, and an
        // upstream reading it its own way may find a DELETE the rules never saw. Not JSON at
        // all (an XML batch) is the rules' to judge.
        element root;
        const std::string_view json = without_bom(body);
        if (local().parser.parse(json.data(), json.size()).get(root) == simdjson::SUCCESS) {
            return {"bad_body", unreadable + ": delete caps and agent scopes judge each subrequest, so every one "
                                             "must read as an object with method and url strings"};
        }
    }
    return {};
}

std::string scoped_subrequests(std::string_view path, std::string_view content_type, std::string_view body,
                               std::vector<subrequest>& out) {
    if (auto unreadable = salesforce_subrequests(path, body, out); !unreadable.empty()) {
        return "this composite request: " + unreadable;
    }
    if (auto unreadable = salesforce_bulk_job(path, content_type, body, out); !unreadable.empty()) {
        return "this request: " + unreadable;
    }
    return {};
}

std::string constrained_subrequests(std::string_view path, std::string_view body,
                                    std::string_view (*ambiguous)(std::string_view),
                                    const std::vector<subrequest>* read) {
    thread_local std::vector<subrequest> own;
    if (read == nullptr) {
        own.clear();
        if (auto why = salesforce_subrequests(path, body, own); !why.empty()) {
            // (An XML batch, say: its subrequests cannot be told apart here.)
            return "this composite request: " + why;
        }
        read = &own;
    }
    const std::vector<subrequest>& subs = *read;
    constexpr std::string_view action = "/actions/standard/emailsimple";
    for (std::size_t i = 0; i < subs.size(); ++i) {
        if (const auto amb = ambiguous ? ambiguous(subs[i].path) : std::string_view{}; !amb.empty()) {
            return "subrequest #" + std::to_string(i) + " of this composite request: its URL contains " +
                   std::string{amb};
        }
        if (subs[i].method == "GET" || subs[i].method == "HEAD") {
            continue;  // the action's description: nothing is sent
        }
        std::string_view p = subs[i].path;
        while (p.size() > 1 && p.back() == '/') {
            p.remove_suffix(1);
        }
        p = without_format_suffix(p);
        if (p.size() >= action.size() && iequals(p.substr(p.size() - action.size()), action)) {
            return "subrequest #" + std::to_string(i) +
                   " of this composite request calls emailSimple, whose inputs this agent's constraints read only "
                   "in a direct call (POST it to .../actions/standard/emailSimple)";
        }
        // A Flow (which may take emailSimple's inputs and send them) or an email alert
        // (a stored send, refused even directly): nothing of them is read in here.
        if (icontains(p, "/actions/custom/")) {
            return "subrequest #" + std::to_string(i) +
                   " of this composite request calls a custom action (a Flow or an email alert, which may send mail), "
                   "whose inputs this agent's constraints read only in a direct call";
        }
    }
    return {};
}

bool body_unreadable(std::string_view why) {
    for (const std::string_view unreadable :
         {"the body is not valid JSON", "the multipart/form-data body is malformed", "reads one way only",
          "is read as a form by some servers", "starts like JSON", "with a raw ';'", "a raw MIME message is not",
          "a charset that does not keep ASCII"}) {
        if (why.find(unreadable) != std::string_view::npos) {
            return true;
        }
    }
    return false;
}

}  // namespace bb::rules
