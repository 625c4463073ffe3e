// Internationalized domain names as the guards compare them (rules/idna.hpp).
#include <gtest/gtest.h>

#include <random>

#include "core/utf8.hpp"
#include "rules/idna.hpp"

namespace bb::rules::test {
namespace {

std::string unicode(std::string_view domain) {
    std::string out = "(unchanged)";
    idna::to_unicode(domain, out);
    return out;
}

std::string ascii(std::string_view domain) {
    std::string out = "(unchanged)";
    idna::to_ascii(domain, out);
    return out;
}

TEST(Idna, AceLabelsDecodeToTheirUnicodeLabels) {
    // Vectors from Python's punycode codec (RFC 3492) and IDNA's well-known examples.
    EXPECT_EQ(unicode("xn--bcher-kva.de"), "bücher.de");
    EXPECT_EQ(unicode("XN--BCHER-KVA.DE"), "bücher.de") << "ACE labels are read without case";
    EXPECT_EQ(unicode("mail.xn--mnchen-3ya.de"), "mail.münchen.de");
    EXPECT_EQ(unicode("xn--r8jz45g.xn--zckzah"), "例え.テスト");
    EXPECT_EQ(unicode("xn--vil-9la.example"), "évil.example");
    EXPECT_EQ(unicode("xn----dhab.example"), "ü-ü.example") << "the basic part ends at the last '-'";
    // RFC 3492 7.1 (L), its mixed-case basic part lower-cased: 3年B組金八先生.
    EXPECT_EQ(unicode("xn--3B-ww4c5e180e575a65lsy2b"), "3年b組金八先生");
}

TEST(Idna, LabelsThatAreNoAceLabelAreKeptAsWritten) {
    EXPECT_FALSE(idna::may_have_other_form("example.com"));
    EXPECT_FALSE(idna::may_have_other_form("my-xn--shop.com")) << "xn-- only at a label's start";
    EXPECT_EQ(unicode("example.com"), "(unchanged)");
    // Punycode of plain ASCII is no A-label: a resolver sends to xn--evil- as written, so it
    // must not meet an entry for `evil`.
    EXPECT_EQ(unicode("xn--evil-.com"), "(unchanged)");
    // Not Punycode, or a code point that would make one label two (U+3002 is a full stop to
    // IDNA: `a。b` would read as a.b).
    EXPECT_EQ(unicode("xn--ab-r13a.example"), "(unchanged)");
    EXPECT_EQ(unicode("xn--b!d.example"), "(unchanged)");
    EXPECT_EQ(unicode("xn--99999999999999999999.example"), "(unchanged)") << "overflow";
    // Raw bytes in the basic part are no Punycode (RFC 3492 6.2): `xn--b\xFCcher-` is not
    // bücher, and a label decoded once does not decode again into something else.
    EXPECT_EQ(unicode("xn--b\xFC" "cher-.de"), "(unchanged)");
    EXPECT_EQ(unicode("xn--xn---kva-95a.com"), "xn--\xC3\xBC-kva.com");
    EXPECT_EQ(unicode("xn--\xC3\xBC-kva.com"), "(unchanged)");
    // Only the canonical spelling: `xn---tda` also decodes to ü, but DNS sends to it as written.
    EXPECT_EQ(unicode("xn--tda.de"), "\xC3\xBC.de");
    EXPECT_EQ(unicode("xn---tda.de"), "(unchanged)");
    // One label decoded, the other kept (lower-cased).
    EXPECT_EQ(unicode("XN--evil-.xn--bcher-kva.DE"), "xn--evil-.bücher.de");
}

// Upper-case letters of the common scripts are lower-cased, as a mail library maps a domain
// before it sends; an ACE label that stands for an upper-case letter is no A-label.
TEST(Idna, UnicodeLabelsAreLowerCased) {
    EXPECT_EQ(unicode("BÜCHER.de"), "bücher.de");
    EXPECT_EQ(unicode("ПРИМЕР.РФ"), "пример.рф");
    EXPECT_EQ(unicode("ΑΘΉΝΑ.gr"), "αθήνα.gr");
    EXPECT_EQ(unicode("ŸVES.ŁÓDŹ.pl"), "ÿves.łódź.pl");
    EXPECT_EQ(unicode("bücher.de"), "(unchanged)") << "already in its Unicode form";
    EXPECT_EQ(unicode("xn--bcher-2pa.de"), "(unchanged)") << "bÜcher";
    EXPECT_EQ(ascii("BÜCHER.de"), "xn--bcher-kva.de");
    EXPECT_EQ(ascii("ПРИМЕР.РФ"), "xn--e1afmkfd.xn--p1ai");
    EXPECT_EQ(unicode("xn--e1afmkfd.xn--p1ai"), "пример.рф");
    // IDNA's other full stops and full-width letters: `ｅｖｉｌ。ｃｏｍ` is evil.com.
    EXPECT_EQ(unicode("evil\xE3\x80\x82" "com"), "evil.com");
    EXPECT_EQ(unicode("\xEF\xBD\x85\xEF\xBD\x96\xEF\xBC\xA9\xEF\xBD\x8C\xEF\xBC\x8E" "com"), "evil.com");
    EXPECT_EQ(unicode("a\xEF\xBC\x8F" "b.com"), "(unchanged)") << "full-width '/' names no host";
    // The whole name is mapped before it is split into labels (UTS 46): an ACE label after a
    // full stop, or written in full-width letters, is decoded too, and the result maps to itself.
    EXPECT_EQ(unicode("xn--bcher-kva\xE3\x80\x82" "de"), "bücher.de");
    EXPECT_EQ(unicode("\xEF\xBD\x98\xEF\xBD\x8E--bcher-kva.de"), "bücher.de");
    for (const std::string_view d : {"xn--bcher-kva\xE3\x80\x82" "de", "BÜCHER.de", "\xEF\xBD\x98\xEF\xBD\x8E--bcher-kva.de"}) {
        const std::string once = unicode(d);
        EXPECT_EQ(unicode(once), "(unchanged)") << once;
    }
    EXPECT_EQ(ascii("\xEF\xBD\x85\xEF\xBD\x96\xEF\xBC\xA9\xEF\xBD\x8C.b\xC3\xBC" "cher.de"), "evil.xn--bcher-kva.de");
}

TEST(Idna, UnicodeLabelsEncodeToTheirAceLabels) {
    EXPECT_EQ(ascii("bücher.de"), "xn--bcher-kva.de");
    EXPECT_EQ(ascii("Mail.Bücher.DE"), "mail.xn--bcher-kva.de");
    EXPECT_EQ(ascii("例え.テスト"), "xn--r8jz45g.xn--zckzah");
    EXPECT_EQ(ascii("example.com"), "(unchanged)");
    EXPECT_EQ(ascii("a\xE3\x80\x82" "b.com"), "a.b.com") << "U+3002 is a full stop";
    EXPECT_EQ(ascii("a\xE3\x80\x82" "b\xC3\xBC.com"), "a.xn--b-eha.com");
    EXPECT_EQ(ascii("b\xFC" "cher.de"), "(unchanged)") << "Latin-1, not UTF-8";
    EXPECT_EQ(ascii("b\xC3\xBC_cher.de"), "(unchanged)") << "'_' is no host name byte";
}

// Random labels of letters, digits, '-' and code points of every UTF-8 length go to their
// ACE form and back unchanged.
TEST(Idna, UnicodeAndAceFormsRoundTrip) {
    std::mt19937_64 rng{7};
    const char32_t pool[] = {U'a', U'z', U'0', U'9', U'-', U'ü', U'é', U'ß', U'ж', U'例', U'テ', U'😀', U'\U0010FFFD'};
    auto utf8 = [](char32_t c, std::string& out) {
        char buf[4];
        char* end = buf;
        put_utf8(static_cast<std::uint32_t>(c), end);
        out.append(buf, end);
    };
    int encoded = 0;
    for (int round = 0; round < 5000; ++round) {
        std::string domain;
        const int labels = 1 + static_cast<int>(rng() % 3);
        for (int l = 0; l < labels; ++l) {
            domain += l ? "." : "";
            const int n = 1 + static_cast<int>(rng() % 12);
            for (int k = 0; k < n; ++k) {
                utf8(pool[rng() % std::size(pool)], domain);
            }
        }
        std::string ace;
        if (!idna::to_ascii(domain, ace)) {
            continue;  // all ASCII, or an ACE label past 63 bytes
        }
        ++encoded;
        EXPECT_TRUE(idna::may_have_other_form(ace)) << ace;
        EXPECT_EQ(unicode(ace), domain) << ace;
    }
    EXPECT_GT(encoded, 3000);
}

}  // namespace
}  // namespace bb::rules::test
