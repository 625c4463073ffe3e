#pragma once
// Content and audience guardrails (issue 7): rule conditions that look at what a request
// says rather than how much it does. A rule with `"guard": {...}` is violated when the guard
// finds something: PII or secrets in the body, a recipient outside the allowed audience,
// off-brand content, or the same (recipient, subject/template) repeated too often.
//
// Pure like the rest of rules/: no sockets, no logging, no clock reads (`now` comes in).
// The one exception is config time: a recipients guard reads its suppression list file when
// the config is parsed (parse_guard), so a config re-parse (SIGHUP, POST /v1/config/reload)
// is what reloads the list. Nothing here reads a file on the data plane.
//
// Matching is linear in the body: hand-written scanners over the bytes, a word-level
// Aho-Corasick automaton for blocked terms, hash sets for domains and suppressed addresses.
// No std::regex, no backtracking. Every input is bounded (terms, list sizes, body bytes).
// The body is parsed once per request for all its guard rules (guard_body); the scanners
// classify bytes with SIMD and only look at the words that can matter to them (see
// guardrails_scan.hpp), each against a word-by-word reference in the tests.
//
// Reasons never carry a matched value in clear: a card shows at most its last four digits
// (`****1111`), an address its first letter and domain (`j***@example.com`), a secret only
// its kind.
//
// Thread-safety: a guardrail is immutable after parse_guard() and may be checked from any
// number of threads. duplicate_counter is internally locked (sharded) and thread-safe.

#include "core/sha256.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include <boost/container/small_vector.hpp>
#include <boost/unordered/unordered_flat_map.hpp>
#include <boost/unordered/unordered_flat_set.hpp>

#include "core/clock.hpp"
#include "core/json_reader.hpp"
#include "rules/request.hpp"
#include "rules/rule_set.hpp"

namespace bb::rules {

// ---------------------------------------------------------------------------------------
// Building blocks, exposed for tests and the benchmark.

// Luhn check over ASCII digits (non-digits are not allowed).
bool luhn_valid(std::string_view digits);
// IBAN without spaces, upper case: country code, check digits, BBAN; length per country for
// the countries we know, else 15-34; ISO 13616 mod-97 == 1.
bool iban_valid(std::string_view iban);
// US SSN "AAA-GG-SSSS": area not 000, 666 or 9xx; group not 00; serial not 0000.
bool ssn_valid(std::string_view area, std::string_view group, std::string_view serial);
// Lower-case hex SHA-256 of `s` (core/sha256.hpp).
using bb::sha256_hex;
// `jane@example.com` -> `j***@example.com`.
std::string mask_address(std::string_view address);

// A set of domains where `example.com` also covers `mail.example.com`. Case-insensitive.
class domain_set {
public:
    void add(std::string_view domain);  // lower-cases; a leading "*." or "." is ignored
    bool contains(std::string_view host) const;  // host itself or any parent domain
    bool empty() const { return domains_.empty(); }
    std::size_t size() const { return domains_.size(); }

private:
    bool contains_lowered(std::string_view host) const;
    [[gnu::noinline]] bool contains_unicode(std::string_view lowered) const;
    struct domain_hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept;
    };
    // Every link of a body is looked up, once per label: a flat (open-addressing) set.
    boost::unordered_flat_set<std::string, domain_hash, std::equal_to<>> domains_;
};

// Suppressed recipients: addresses and SHA-256 hex digests of lower-cased addresses, one a
// line, `#` starts a comment. Both kinds are stored as digests (16 bytes of the SHA-256 of
// the lower-cased address), so the table holds no address in clear.
class suppression_list {
public:
    // Parses the text of a list file; errors ("line 4: ...") go to *error and stop the load.
    // max_entries bounds memory.
    static std::optional<suppression_list> parse(std::string_view text, std::size_t max_entries, std::string* error);
    // Reads and parses a file (config time only).
    static std::optional<suppression_list> load_file(const std::string& path, std::size_t max_entries,
                                                     std::string* error);
    // Case-insensitive on the address; a sub-address `local+tag@domain` is also looked up as
    // `local@domain` (suppressing a person suppresses their tags, not the other way round);
    // a Gmail address as every spelling of it with other dots before the tag, at gmail.com
    // or googlemail.com (the same mailbox).
    bool contains(std::string_view address) const;
    // The index of the first address that is in the list, addresses.size() if none (the same
    // as calling contains() in turn).
    std::size_t first_of(std::span<const std::string_view> addresses) const;
    std::size_t size() const { return digests_.size(); }
    // Entries of this list that `newer` may no longer suppress (a reload that un-suppresses
    // them): each is kept when `newer` holds its spelling (for a listed Gmail address, its
    // spelling without dots, however either line spells it) as an entry or as a Gmail line's
    // spelling without dots. A tagged entry replaced by its base counts as taken off (the
    // base covers it: the stricter way).
    std::size_t missing_from(const suppression_list& newer) const {
        std::size_t n = 0;
        for (const auto& d : digests_) {
            const auto g = gmail_of_.find(d);
            const auto& spelling = g == gmail_of_.end() ? d : g->second;
            n += newer.digests_.contains(spelling) || newer.gmail_.contains(spelling) ? 0 : 1;
        }
        return n;
    }

private:
    bool contains_as_written(std::string_view address) const;  // both IDNA spellings of the domain
    struct digest_hash {
        using is_avalanching = void;  // SHA-256 bytes are uniform already
        std::size_t operator()(const std::array<std::uint8_t, 16>& d) const noexcept;
    };
    boost::unordered_flat_set<std::array<std::uint8_t, 16>, digest_hash> digests_;
    // The listed Gmail addresses' spellings without dots (gmail.com), where they had dots or
    // were at googlemail.com: one person, however the line spelled them. Not entries.
    boost::unordered_flat_set<std::array<std::uint8_t, 16>, digest_hash> gmail_;
    // For each such entry, its spelling without dots (config time only: missing_from).
    boost::unordered_flat_map<std::array<std::uint8_t, 16>, std::array<std::uint8_t, 16>, digest_hash> gmail_of_;
};

// Word-level Aho-Corasick automaton over a list of terms. A term is split into words
// (runs of letters, digits, `_` and non-ASCII bytes, case-folded: detail::fold_case); the
// text is split the same way and the automaton runs over word ids, so a term matches only
// on word boundaries, in time linear in the text whatever the number of terms. Between the
// words of a term the text may have any run of non-word characters ("Free Money!",
// "free-money", "FREE, money" all match "free money"; "freemoney" and "free_money" do not).
// An Aho–Corasick automaton over 32-bit symbols (term_matcher's word ids, or the bytes of
// unspaced terms): extend() and end() add the sequences, build() then makes the failure
// links breadth first. A state's output is that of a sequence ending there (the first
// added), else that of its failure state; -1 for none.
class symbol_automaton {
public:
    // The state after `symbol` from `state`, added if new (before build()).
    std::uint32_t extend(std::uint32_t state, std::uint32_t symbol);
    // A sequence that ends at `state` outputs `value` (unless an earlier one ends there).
    void end(std::uint32_t state, std::int32_t value) {
        if (out_[state] < 0) {
            out_[state] = value;
        }
    }
    void build();
    // Whether build() ran after the last sequence was added, and some sequence was.
    bool ready() const { return states_ > 1 && fail_.size() == states_; }
    std::uint32_t step(std::uint32_t state, std::uint32_t symbol) const;
    std::int32_t output(std::uint32_t state) const { return out_[state]; }
    // f(symbol, state) for each edge from the root.
    template <class F>
    void for_each_first(F&& f) const {
        for (const auto& [edge, to] : edges_) {
            if ((edge >> 32) == 0) {
                f(static_cast<std::uint32_t>(edge), to);
            }
        }
    }

private:
    boost::unordered_flat_map<std::uint64_t, std::uint32_t> edges_;  // (state << 32 | symbol) -> state
    std::vector<std::uint32_t> fail_;
    std::vector<std::int32_t> out_ = std::vector<std::int32_t>(1, -1);
    std::uint32_t states_ = 1;
};

class term_matcher {
public:
    // Returns false (and *error) for a term without any word or longer than the bounds.
    bool add(std::string_view term, std::string* error);
    void build();
    bool empty() const { return terms_.empty(); }
    std::size_t size() const { return terms_.size(); }

    // Word id of a case-folded word (detail::fold_word), 0 if the word is in no term.
    std::uint32_t word_id(std::string_view folded_word) const;
    // Automaton step: state after reading word `id` (0 = unknown word) from `state`.
    std::uint32_t step(std::uint32_t state, std::uint32_t id) const;
    // Index of a term that ends in `state` (its longest), or -1.
    std::int32_t output(std::uint32_t state) const { return words_ac_.output(state); }
    std::size_t term_words(std::size_t term) const { return term_words_[term]; }
    const std::string& term(std::size_t i) const { return terms_[i]; }
    // Cheap pre-filter: whether some term word has this length, first and last byte (a text's
    // bytes, ASCII lower-cased; the bits hold every spelling of a two-byte first or last letter,
    // and ß's first or last byte for a word that starts or ends in ss).
    bool maybe_word(std::size_t len, unsigned char first, unsigned char last) const {
        return len < 64 && ((first_bits_[len] >> (first & 63)) & (last_bits_[len] >> (last & 63)) & 1u);
    }
    // Cheaper pre-filters, before the word's end is known, on the raw first two bytes of a
    // word (`first | second << 8`; second: the byte after a one-byte word, 0 at the end):
    // whether some word of a term, or some first word of a term, starts so in any case.
    // Built by build().
    bool maybe_word_start(unsigned pair) const { return (word_pairs_[pair >> 6] >> (pair & 63)) & 1u; }
    bool maybe_term_start(unsigned pair) const { return (first_pairs_[pair >> 6] >> (pair & 63)) & 1u; }
    // The same first-word pairs as SIMD nibble tables (a wider prefilter; guardrails_scan.cpp).
    const std::array<std::uint8_t, 64>& start_nibbles() const { return start_nibbles_; }
    // Terms written in a script that puts no spaces between words (Chinese, Japanese, Thai,
    // Lao, Khmer, Burmese): found anywhere in a run of such text, not only as a whole run.
    // The index of the one whose match in `text` ends first (and *at, its offset), or -1.
    bool has_unspaced() const { return unspaced_ac_.ready(); }
    std::int32_t find_unspaced(std::string_view text, std::size_t* at) const;

private:
    struct word_hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view w) const noexcept;
    };
    std::vector<std::string> terms_;
    std::vector<std::size_t> term_words_;
    std::vector<std::string> words_;
    // Vocabulary: word -> id (1-based); the data plane looks up every candidate word.
    boost::unordered_flat_map<std::string, std::uint32_t, word_hash, std::equal_to<>> vocab_;
    symbol_automaton words_ac_;  // over word ids
    std::vector<std::uint64_t> word_pairs_ = std::vector<std::uint64_t>(1024, 0);   // 65,536 bits
    std::vector<std::uint64_t> first_pairs_ = std::vector<std::uint64_t>(1024, 0);  // 65,536 bits
    std::array<std::uint8_t, 64> start_nibbles_{};
    std::array<std::uint64_t, 64> first_bits_{};
    std::array<std::uint64_t, 64> last_bits_{};
    // Unspaced terms (their word as shown), matched byte by byte (linear in the text
    // whatever the number of terms); the automaton's outputs index unspaced_.
    struct unspaced_term {
        std::string text;
        std::int32_t index;
    };
    std::vector<unspaced_term> unspaced_;
    symbol_automaton unspaced_ac_;
};

// ---------------------------------------------------------------------------------------
// The guard a rule carries.

// Where a guard reads values: a JSON path over the request body, or a form field (Mailgun).
struct guard_field {
    bool form = false;
    bool mime = false;  // `mime:$.path`: the base64 MIME messages there (rules/mime.hpp)
    // mime:form:NAME holds the message as written (Mailgun messages.mime); mime:base64:form:NAME
    // its base64 (SES v1 RawMessage.Data). A JSON mime field is always base64.
    bool base64 = false;
    // `attachment:$.path`: the base64 files there (SendGrid attachments[].content), decoded
    // and read as text by the pii guard.
    bool attachment = false;
    // `name:` before a JSON path or form:NAME: an address header's value (Mailgun's `from`,
    // SES's FromEmailAddress), of which the content guard reads only the words a mail client
    // shows beside the addresses: the sender's display name (sender_name_text, rules/mime.hpp).
    bool display = false;
    std::string name;  // form field
    json_path path;    // JSON (also for mime)
    std::string text;  // as written
};

// The JSON paths of up to three field lists, compiled at config time for matching along a
// walk of the body (path_tracker in guardrails.cpp): per depth, the distinct names (as length
// and first 8 bytes, so a key is mostly rejected without comparing strings), indexes and
// wildcards that some path's step at that depth accepts, each with the bits of those paths.
// A value's paths are then its parent's ANDed with what its own key or index selects at its
// depth: one scan of that depth's few names, whatever the number of paths. At most 64 paths;
// with more (a duplicates guard may have 3 x 32) `fallback` is set and the lists are matched
// as they are.
struct path_index {
    struct name {
        std::uint64_t head = 0;  // first 8 bytes, zero-padded
        std::size_t len = 0;
        std::string text;
    };
    struct level {
        std::vector<std::pair<name, std::uint64_t>> names;           // key -> paths, by length
        // names[by_len[n] .. by_len[n + 1]) are the names n bytes long (an ASCII key matches
        // only a name of its own length: step_paths looks at those alone).
        std::vector<std::uint32_t> by_len;
        std::vector<std::pair<std::size_t, std::uint64_t>> indexes;  // [i] -> paths
        std::uint64_t wildcard = 0;                                  // [*] -> paths
        std::uint64_t ending = 0;                                    // paths that end at this depth
    };
    std::vector<std::vector<path_segment>> paths;  // the JSON fields, list by list
    std::vector<level> levels;                      // levels[d - 1]: the steps at depth d
    std::array<std::uint64_t, 3> lists{};           // the bits of each list's paths
    std::uint64_t root = 0;                         // paths "$"
    bool fallback = false;

    static std::uint64_t head_of(std::string_view s);
    static path_index of(std::initializer_list<const std::vector<guard_field>*> lists);
    void build_levels();  // from `paths`
};

enum class pii_kind : std::uint8_t { card = 1, ssn = 2, iban = 4, secrets = 8 };

struct pii_guard {
    std::uint8_t kinds = 0;           // pii_kind bits
    bool every_value = true;          // no `in`: every string and number of the body
    std::vector<guard_field> in;      // `in` (its JSON and form fields)
    path_index in_index;
    // Raw messages read as a mail client shows them (mime:$.path; default SES v2
    // $.Content.Raw.Data when there is no `in`, else the mime: fields of `in`).
    std::vector<guard_field> mime;
    // Attachments read decoded (attachment:$.path; default SendGrid $.attachments[*].content
    // and SES v2 Content/DefaultContent.Simple/Template.Attachments[*].RawContent when there is
    // no `in`).
    std::vector<guard_field> attachments;
};

struct recipients_guard {
    domain_set allow;                 // empty: any domain not blocked
    domain_set block;
    std::shared_ptr<const suppression_list> suppressed;  // null: none
    std::string suppression_file;
    std::vector<guard_field> fields;  // defaults: SendGrid, SES, Mailgun, HubSpot recipients
    path_index index;
    // A send that asks the API to skip its own suppression lists (SendGrid's
    // mail_settings.bypass_*_management) is violated (suppression_bypass: refuse).
    bool refuse_bypass = false;
    // A request with a body in which the fields name no recipient is violated: a send to a
    // list or a segment (SendGrid single sends, HubSpot marketing email) whose audience the
    // guard cannot see.
    bool require_recipients = false;
};

struct content_guard {
    term_matcher terms;
    domain_set link_domains;
    bool check_links = false;         // link_domains given
    bool require_unsubscribe = false;
    // Other words that satisfy require_unsubscribe besides `unsubscribe` (`abmelden`,
    // `désabonner`), case-folded (detail::fold_case); and templates stored upstream with
    // their own unsubscribe link: a send naming only such templates satisfies it.
    std::vector<std::string> unsubscribe_words;
    std::vector<std::string> unsubscribe_templates;
    std::vector<guard_field> template_fields;  // where sends name templates (the duplicates guard's defaults)
    path_index template_index;
    std::vector<guard_field> fields;  // defaults: subjects, bodies (SendGrid, SES, Mailgun)
    std::vector<guard_field> names;   // the name: fields (default: the From of SES, Mailgun, HubSpot)
    path_index index;                 // fields, then names
    std::vector<guard_field> mime;    // raw messages (the mime: fields; default SES v2 $.Content.Raw.Data)
};

struct duplicates_guard {
    std::uint32_t max = 1;            // more than max in the window: violated
    milliseconds window{0};
    bool by_recipient = false;
    bool by_subject = false;
    bool by_template = false;
    std::vector<guard_field> recipient_fields;
    std::vector<guard_field> subject_fields;
    std::vector<guard_field> template_fields;
    // Raw messages (mime: fields): their To/Cc/Bcc are recipients, their Subject a subject.
    std::vector<guard_field> recipient_mime;
    std::vector<guard_field> subject_mime;
    std::size_t max_keys = 100'000;   // tracked (recipient, subject/template) pairs
    path_index index;                 // the three lists, in that order (empty when not counted)
};

struct guardrail {
    enum class kind : std::uint8_t { pii, recipients, content, duplicates };
    kind k = kind::pii;
    pii_guard pii;
    recipients_guard recipients;
    content_guard content;
    duplicates_guard duplicates;
    std::string canonical;  // for the rule fingerprint (state-bearing parts only)
    // A duplicates guard with a default field list: its canonical form as the release before
    // 0e9ae91 wrote it (the lists spelled out), so a table that release saved is read back.
    std::string canonical_legacy;
    bool needs_structure() const {  // must read fields (an invalid JSON body cannot be checked)
        return k == kind::recipients || k == kind::duplicates;
    }
};

// Parses the value of a rule's `"guard"` at `path`; errors go to errs with their JSON paths.
// A recipients guard loads its suppression file here (config time).
std::shared_ptr<guardrail> parse_guard(simdjson::dom::element e, const std::string& path, cfg::errors& errs);
std::string_view to_string(guardrail::kind k);

// application/x-www-form-urlencoded or multipart/form-data (Mailgun): the engine hands the
// guard the decoded form fields.
bool is_form_content_type(std::string_view content_type);

// ---------------------------------------------------------------------------------------
// Duplicate detection state: a bounded, time-windowed counter keyed by a 64-bit hash of
// (rule key, recipient, subject/template). Exact within its bounds: each tracked pair keeps
// the times of its last `max` sends, so "more than max in the window" is decided exactly.
// At most `max_keys` pairs are tracked, in two parts. The main part (7/8) never forgets a
// pair while it has a send in the window (the least recently seen one goes once it has
// none), so a loop over a list longer than the table is caught on the pairs it holds. When
// it is full, new pairs go to a probation part (1/8, at least one slot a shard when
// max_keys >= 16), which forgets the least recently seen pair sent only once in its window:
// a new looping pair is tracked while a large campaign fills the table, and caught if it
// repeats before an eighth of the table's worth of new pairs arrives. A pair sent twice
// moves to the main part when it has room or its least recently seen pair has nothing left
// in the window, and is never forgotten within its window either way; nor is a pair refused
// within the window (max 1). With no slot to give, a new pair is not tracked (untracked()).
// Only hashes are stored, never addresses.
//
// Thread-safe: 16 shards, each with its own mutex held for a few tens of nanoseconds. A
// shard is flat: an open-addressing index from key to slot, slots in one vector linked in
// recency order by 32-bit indices, a slot's send times inline up to three (heap beyond), so
// booking a known pair allocates nothing and an evicted slot is reused in place.
class duplicate_counter {
public:
    duplicate_counter(std::uint32_t max, milliseconds window, std::size_t max_keys);
    duplicate_counter(const duplicate_counter&) = delete;
    duplicate_counter& operator=(const duplicate_counter&) = delete;

    // If `key` was seen max times within the window ending at now_ms: returns the count
    // and books nothing. Otherwise books now_ms and returns 0.
    std::uint32_t check_and_book(std::uint64_t key, std::int64_t now_ms);
    // Undoes a booking (a later rule refused the request).
    void unbook(std::uint64_t key, std::int64_t now_ms);
    // This table under new limits (a reload that only changed max or window): the send
    // times kept judge the next sends by them, and sends that requests still on the old
    // config book meanwhile are in it too (a copy would lose them: a loop's pair booked
    // during the swap sent once more). Only the limits are new, so an apply that fails or is
    // shadowed leaves the running rule as it was.
    std::shared_ptr<duplicate_counter> with_limits(std::uint32_t max, milliseconds window) const;
    // The same into a table of another size (a reload that changed max_keys, or a max whose
    // default max_keys follows it): every pair with a send in the window ending at the
    // latest send or refusal the table holds, least recently seen first, as far as the new
    // table has room (as restore() does).
    std::shared_ptr<duplicate_counter> resized(std::uint32_t max, milliseconds window, std::size_t max_keys) const;
    std::size_t max_keys() const { return max_keys_; }
    // Carrying the sends over a restart (as rule_meter::encode/restore do for caps): every
    // pair with a send in the window ending at now_ms, or refused in it, least recently seen
    // first; "" when there is none.
    std::string encode(std::int64_t now_ms) const;
    // Into a table that has booked nothing yet: the pairs of `blob`, every time moved by
    // `shift_ms` (the saving process's clock onto this one's), one after now_ms put at now_ms. Pairs
    // beyond this table's room are left out (the same rule has the same room). False +
    // *error if the blob is not a saved table (nothing restored then).
    bool restore(std::string_view blob, std::int64_t shift_ms, std::int64_t now_ms, std::string* error);
    std::size_t keys() const;
    std::uint64_t evictions() const;
    // New pairs not tracked because every tracked pair of their shard was in its window.
    std::uint64_t untracked() const;

private:
    static constexpr std::uint32_t none = 0xFFFF'FFFFu;
    struct slot {
        std::uint64_t key = 0;
        std::uint32_t newer = none;  // recency links (indices into slots)
        std::uint32_t older = none;
        // Send times, oldest first, from `head` on (what left the window is skipped, and
        // dropped in one move once it is half the vector or before the vector would grow: no
        // shift of every time per send, and never more than the window holds).
        boost::container::small_vector<std::int64_t, 3> times;
        std::uint32_t head = 0;
        bool probation = false;  // in the probation part (see above)
        std::int64_t refused_ms = std::numeric_limits<std::int64_t>::min();  // last refusal
    };
    struct shard {
        std::mutex mu;
        boost::unordered_flat_map<std::uint64_t, std::uint32_t> index;  // key -> slot
        std::vector<slot> slots;
        // Recency lists, [0] the main part and [1] probation.
        std::uint32_t newest[2] = {none, none};
        std::uint32_t oldest[2] = {none, none};
        std::uint32_t count[2] = {0, 0};
        std::vector<std::uint32_t> free;  // slots in no list (a main pair made way for a promotion)
        std::uint64_t evictions = 0;
        std::uint64_t untracked = 0;

        void unlink(std::uint32_t i);
        void push_newest(std::uint32_t i);
        // Evicts the pair of slot i: out of the index and its list, its times cleared.
        void forget(std::uint32_t i);
    };
    // Sends of slot e in the window ending at now_ms.
    std::size_t in_window(const slot& e, std::int64_t now_ms) const;
    static std::size_t shard_index(std::uint64_t key) { return (key >> 59) & 15; }
    shard& shard_of(std::uint64_t key) { return shards_[shard_index(key)]; }
    std::uint64_t total(std::uint64_t shard::*field) const;  // over the shards

    std::size_t max_keys_;
    std::uint32_t max_;
    std::int64_t window_ms_;
    std::size_t per_shard_;
    std::size_t probation_;  // of per_shard_
    static constexpr std::size_t shard_count = 16;
    // The pairs and their send times; shared by with_limits() with the counter of the config
    // that follows (requests still on this one book where the next one reads). Times are
    // dropped only once out of the longest window of the counters sharing it (`keep_ms`);
    // each counter counts its own window.
    struct table {
        std::array<shard, shard_count> shards;
        std::atomic<std::int64_t> keep_ms{0};
    };
    struct shared_table {};  // the constructor that shares another counter's table
    duplicate_counter(shared_table, std::uint32_t max, milliseconds window, std::size_t max_keys,
                      std::shared_ptr<table> t);
    std::shared_ptr<table> table_;
    std::array<shard, shard_count>& shards_;
};

// ---------------------------------------------------------------------------------------
// Checking one request.

struct guard_booking {
    std::uint64_t key = 0;
    std::int64_t ms = 0;
};

struct guard_result {
    enum class status : std::uint8_t { clean, violated, invalid_body };
    status outcome = status::clean;
    std::string finding;  // "card number (Luhn-valid, ****1111) at body offset 214 ($.content[0].value)"
    std::uint32_t count = 0;  // duplicates: sends already in the window
};

namespace detail {
class parsed_body;
}

// The paths of the guard rules of a rule set in one index, as long as they fit in its 64
// (in config order; a guard that does not fit, or has more than 64 paths of its own, follows
// its own). The shared parse classifies every value once against all of them; each guard then
// reads its own bits instead of following its paths along the body again (the recipients,
// content and duplicates guards used to follow the same personalizations three times).
struct guard_paths {
    path_index all;
    std::vector<std::pair<const path_index*, unsigned>> offsets;  // a guard's index -> its first bit in `all`

    // The first bit of this guard index's paths, or -1 when it follows its own.
    int offset_of(const path_index* index) const {
        for (const auto& [p, off] : offsets) {
            if (p == index) {
                return static_cast<int>(off);
            }
        }
        return -1;
    }
    // Null when no guard has a JSON path.
    static std::shared_ptr<const guard_paths> of(const std::vector<const guardrail*>& guards);
};

// A request body as the guards read it: parsed at most once per request and shared by every
// guard rule of that request (each used to walk the JSON itself, four walks with all four
// guards on). The engine keeps one per thread in its scratch and calls reset() at the start
// of every evaluate(). Not thread-safe: one per thread.
class guard_body {
public:
    guard_body();
    ~guard_body();
    guard_body(const guard_body&) = delete;
    guard_body& operator=(const guard_body&) = delete;
    // The next guard reads a new request (and large buffers are freed); `paths`: the guard
    // paths of the rule set in use, to classify the values by when the body is parsed.
    void reset(const guard_paths* paths = nullptr);
    detail::parsed_body& parsed() { return *p_; }

private:
    std::unique_ptr<detail::parsed_body> p_;
};

struct guard_input {
    const request_view& req;
    // Decoded form fields when the body is a form (Mailgun), else null.
    const std::vector<std::pair<std::string, std::string>>* form = nullptr;
    std::string_view key;  // the rule's key value (duplicates are counted per key)
    // The parse of req.body shared by the guards of this request; null: the guard parses it.
    guard_body* body = nullptr;
    // `form` holds the query string's fields, read as a form beside a body that is not one
    // (a JSON or text body: an upstream that merges query and form fields reads them too).
    bool query_fields = false;
};

// Runs the guard. `dups`/`bookings`: for a duplicates guard, the counter to book in and
// where to record what was booked (so the caller can undo it).
guard_result check_guard(const guardrail& g, const guard_input& in, time_point now, duplicate_counter* dups,
                         std::vector<guard_booking>* bookings);

// After a duplicates guard found a violation whose enforcement an operator suspended
// (forced_closed, metrics_only): the request is sent all the same, so every pair of it that
// this thread's last check_duplicates read is booked (up to max each), as a send.
void book_suspended_duplicates(duplicate_counter* dups, time_point now, std::vector<guard_booking>* bookings);

}  // namespace bb::rules
