#pragma once
// Internationalized domain names, as far as the guards compare them: a domain written with
// ACE labels (`xn--bcher-kva.de`, what an SMTP library or a browser sends) and the same
// domain written in Unicode (`bücher.de`, what a CRM or an operator writes) are one domain to
// DNS, so an allow list, a block list, a suppression list or an agent's from domains must see
// them as one. Punycode (RFC 3492) by hand: none of the project's libraries (Boost.URL,
// OpenSSL) has it, and libidn2 is not among its dependencies.
//
// Not the whole of IDNA2008/UTS 46: letters are lower-cased in ASCII, Latin-1, Latin
// Extended-A, modern Greek and basic Cyrillic only (`BÜCHER.de` is bücher.de, as a mail
// library maps it), IDNA's other full stops are dots and full-width letters, digits and
// hyphens their ASCII selves (`ｅｖｉｌ。ｃｏｍ` is evil.com),
// there is no Unicode normalization (a precomposed `ü` and `u` + a combining diaeresis stay
// two spellings), and no check of which code points a label may hold beyond what keeps a
// label one label. Pure; thread-safe.

#include <string>
#include <string_view>

namespace bb::rules::idna {

// `domain` (any case) with every label that is a valid ACE label (`xn--` + the one Punycode
// spelling of at least one non-ASCII code point, with no dot, control character or
// upper-case letter among them) written as its Unicode label in UTF-8, every Unicode label's
// letters lower-cased (see above), and ASCII lower-cased; a label that does not decode so is
// kept as written (lower-cased). The domain names it: the form the guards compare. Returns
// false, leaving `out` alone, when no label was decoded or lower-cased beyond ASCII (the
// domain's own form, ASCII lower-cased, is then the Unicode form).
bool to_unicode(std::string_view domain, std::string& out);

// `domain` with every label that holds a non-ASCII byte written as its ACE label, its
// letters lower-cased first (`BÜCHER.de` -> `xn--bcher-kva.de`), ASCII lower-cased. Returns
// false, leaving `out` alone, when no label is non-ASCII or one is not UTF-8 that encodes so.
bool to_ascii(std::string_view domain, std::string& out);

// Whether a domain may have another spelling for to_unicode/to_ascii to give: a label that
// starts with `xn--` (any case), or a non-ASCII byte. Also for a whole address (a label may
// start after its '@'). Cheap; false for nearly every domain.
bool may_have_other_form(std::string_view domain);

}  // namespace bb::rules::idna
