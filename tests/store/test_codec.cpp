#include "store/codec.hpp"

#include <gtest/gtest.h>

#include <set>

TEST(store_codec, tickets_are_prefixed_base32_distinct_and_sort_by_time) {
    std::set<std::string> seen;
    std::string previous;
    for (int i = 0; i < 2000; ++i) {
        const auto t = bb::store::make_ticket(1'700'000'000'000 + i * 7);
        ASSERT_EQ(t.size(), bb::store::ticket_length) << t;
        EXPECT_LT(previous, t);
        previous = t;
        EXPECT_EQ(t.substr(0, 2), "q_");
        for (char c : t.substr(2)) {
            EXPECT_TRUE((c >= 'a' && c <= 'z') || (c >= '2' && c <= '7')) << t;
        }
        EXPECT_TRUE(seen.insert(t).second) << "duplicate " << t;
    }
}

TEST(store_codec, headers_round_trip_byte_identical_in_order) {
    bb::store::header_list h{{"Content-Type", "application/json"},
                             {"X-Dup", "one"},
                             {"X-Dup", "two"},
                             {"X-Bin", std::string{"\0\xff\x80 raw\r\n", 9}},
                             {"", ""}};
    const auto blob = bb::store::encode_headers(h);
    auto back = bb::store::decode_headers(blob);
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, h);
    // Truncated or padded blobs are refused rather than half-read.
    EXPECT_FALSE(bb::store::decode_headers(blob.substr(0, blob.size() - 1)));
    EXPECT_FALSE(bb::store::decode_headers(blob + "x"));
    EXPECT_FALSE(bb::store::decode_headers(""));
    EXPECT_EQ(bb::store::decode_headers(bb::store::encode_headers({}))->size(), 0u);
}

TEST(store_codec, base64_matches_rfc4648_vectors) {
    EXPECT_EQ(bb::store::base64_encode(""), "");
    EXPECT_EQ(bb::store::base64_encode("f"), "Zg==");
    EXPECT_EQ(bb::store::base64_encode("fo"), "Zm8=");
    EXPECT_EQ(bb::store::base64_encode("foo"), "Zm9v");
    EXPECT_EQ(bb::store::base64_encode("foobar"), "Zm9vYmFy");
    EXPECT_EQ(bb::store::base64_encode(std::string{"\0\xff\xfe", 3}), "AP/+");
}

TEST(store_codec, json_string_escapes_and_replaces_invalid_utf8) {
    EXPECT_EQ(bb::store::json_string("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
    EXPECT_EQ(bb::store::json_string("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
    EXPECT_EQ(bb::store::json_string("x\xffy"), "\"x\\ufffdy\"");
    EXPECT_EQ(bb::store::json_string("\xc0\xaf"), "\"\\ufffd\\ufffd\"");  // overlong '/'
    EXPECT_EQ(bb::store::json_string("\xed\xa0\x80"), "\"\\ufffd\\ufffd\\ufffd\"");  // surrogate
}
