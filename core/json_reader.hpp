#pragma once
// Helpers for reading the JSON config into plain structs while collecting *every* error
// with its JSON path (`rules[3].window: "1x" is not a duration`). Used by each section's
// parser; none of this runs on the data plane.
//
// Not thread-safe: one reader per parse.

#include <simdjson.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace bb::cfg {

// A simdjson parser keeps the capacity of the largest document it read (about 15 bytes per
// byte of input) for as long as it lives: a per-thread parser that once read a 10 MiB body
// pins ~150 MiB on that worker for the process's life. Before a parse of `next_bytes`, one
// grown past 1 MiB is replaced by a fresh parser when the next document is smaller. Only
// where nothing parsed by it before is still in use.
inline void release_if_grown(simdjson::dom::parser& parser, std::size_t next_bytes) {
    constexpr std::size_t keep = std::size_t{1} << 20;
    if (parser.capacity() > keep && next_bytes <= keep) {
        parser = simdjson::dom::parser{};
    }
}

struct error {
    std::string path;     // "rules[3].window"; "" for the document itself
    std::string message;  // "\"1x\" is not a duration"
    std::string to_string() const { return path.empty() ? message : path + ": " + message; }
};

class errors {
public:
    void add(std::string path, std::string message) {
        if (!mistyped_.contains(path)) {
            list_.push_back({std::move(path), std::move(message)});
        }
    }
    // A list item of the wrong type (object_reader::strings): the item stands in the list as
    // its JSON text so the others are checked, and what the caller then says of that text
    // at the same path is left out (`7` is "not a string", not also "not 64 hex digits").
    void add_type_error(std::string path, std::string message) {
        mistyped_.insert(path);
        list_.push_back({std::move(path), std::move(message)});
    }
    // A check added after configs were stored: an error, except while reading back a version
    // stored before it (lenient), which is kept with a warning rather than dropped at a
    // start for the file (undoing an operator's change). The caller keeps the old reading.
    void add_since_stored(std::string path, std::string message) {
        if (!mistyped_.contains(path)) {
            (lenient_ ? relaxed_ : list_).push_back({std::move(path), std::move(message)});
        }
    }
    void set_lenient(bool on) { lenient_ = on; }
    const std::vector<error>& relaxed() const { return relaxed_; }
    bool empty() const { return list_.empty(); }
    std::size_t size() const { return list_.size(); }
    const std::vector<error>& list() const { return list_; }
    // One error a line.
    std::string to_string() const;

private:
    std::vector<error> list_;
    std::vector<error> relaxed_;
    std::set<std::string, std::less<>> mistyped_;
    bool lenient_ = false;
};

// "250ms", "30s", "15m", "1h", "7d" (a whole number and a unit). nullopt when malformed.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);
// The longest duration a config takes (ten years: a store's retention may be long; a
// cooldown or a window that long is already "never").
inline constexpr std::chrono::milliseconds max_duration{std::int64_t{3650} * 86'400'000};
// Renders a duration the way the config writes it ("1500ms", "30s", "2h").
std::string format_duration(std::chrono::milliseconds d);

// JSON string literal with escapes, quotes included; for messages and JSON output. Always
// valid UTF-8: control characters and DEL are escaped, and a byte that starts no well-formed
// UTF-8 sequence is written as \ufffd.
std::string quote(std::string_view s);

// Path helpers: child("rules", 3) -> "rules[3]"; child("rules[3]", "window") -> "rules[3].window".
std::string child(std::string_view parent, std::string_view key);
std::string child(std::string_view parent, std::size_t index);

// Reads the fields of one JSON object. Every accessor reports a type error at the field's
// path and returns nullopt; `finish()` reports keys that no accessor asked for, so a typo
// (`"limt": 10`) is an error rather than a silently ignored setting.
class object_reader {
public:
    object_reader(simdjson::dom::element element, std::string path, errors& errs);
    ~object_reader() = default;
    object_reader(const object_reader&) = delete;
    object_reader& operator=(const object_reader&) = delete;

    bool is_object() const { return is_object_; }
    const std::string& path() const { return path_; }
    std::string path_of(std::string_view key) const { return child(path_, key); }
    errors& errs() { return errs_; }
    bool has(std::string_view key);

    std::optional<std::string> string(std::string_view key, bool required = false);
    std::optional<std::int64_t> integer(std::string_view key, bool required = false,
                                        std::int64_t min = INT64_MIN, std::int64_t max = INT64_MAX);
    std::optional<double> number(std::string_view key, bool required = false,
                                 double min = -1e300, double max = 1e300);
    std::optional<bool> boolean(std::string_view key, bool required = false);
    // At most max_duration unless told: longer is a typo (and would overflow the clock
    // arithmetic of cooldowns and windows).
    std::optional<std::chrono::milliseconds> duration(std::string_view key, bool required = false,
                                                      std::chrono::milliseconds min = std::chrono::milliseconds{0},
                                                      std::chrono::milliseconds max = max_duration);
    std::optional<simdjson::dom::array> array(std::string_view key, bool required = false);
    std::optional<simdjson::dom::element> object(std::string_view key, bool required = false);
    // Every item, in order; one that is not a string is an error and stands as its JSON text.
    std::optional<std::vector<std::string>> strings(std::string_view key, bool required = false);
    // Any JSON value; the caller checks its type.
    std::optional<simdjson::dom::element> value(std::string_view key, bool required = false);

    // Report every key that was not read. Call once, after all accessors.
    void finish();

private:
    std::optional<simdjson::dom::element> lookup(std::string_view key, bool required);

    simdjson::dom::object object_{};
    std::string path_;
    errors& errs_;
    bool is_object_ = false;
    std::set<std::string, std::less<>> seen_;
};

// Name of a simdjson element type for messages ("a string", "an array", ...).
std::string_view type_name(simdjson::dom::element_type t);

}  // namespace bb::cfg
