#include "core/json_reader.hpp"

#include "core/utf8.hpp"

#include <charconv>
#include <cmath>
#include <limits>

namespace bb::cfg {

std::string errors::to_string() const {
    std::string out;
    for (const auto& e : list_) {
        out += e.to_string();
        out += '\n';
    }
    return out;
}

std::optional<std::chrono::milliseconds> parse_duration(std::string_view text) {
    std::size_t i = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
        ++i;
    }
    if (i == 0 || i > 12) {
        return std::nullopt;
    }
    std::int64_t n = 0;
    std::from_chars(text.data(), text.data() + i, n);
    const std::string_view unit = text.substr(i);
    std::int64_t scale = 0;
    if (unit == "ms") {
        scale = 1;
    } else if (unit == "s") {
        scale = 1000;
    } else if (unit == "m") {
        scale = 60'000;
    } else if (unit == "h") {
        scale = 3'600'000;
    } else if (unit == "d") {
        scale = 86'400'000;
    } else {
        return std::nullopt;
    }
    // Twelve digits of days would overflow: saturated, so every bound above refuses it.
    if (n > std::numeric_limits<std::int64_t>::max() / scale) {
        return std::chrono::milliseconds::max();
    }
    return std::chrono::milliseconds{n * scale};
}

std::string format_duration(std::chrono::milliseconds d) {
    const auto ms = d.count();
    struct unit {
        std::int64_t scale;
        const char* name;
    };
    for (const unit u : {unit{86'400'000, "d"}, unit{3'600'000, "h"}, unit{60'000, "m"}, unit{1000, "s"}}) {
        if (ms != 0 && ms % u.scale == 0) {
            return std::to_string(ms / u.scale) + u.name;
        }
    }
    return std::to_string(ms) + "ms";
}

std::string quote(std::string_view s) {
    std::string out;
    out.reserve(s.size() + 2);
    out += '"';
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        if (static_cast<unsigned char>(c) >= 0x80) {
            // JSON text is UTF-8: a byte that starts no well-formed sequence (a client's
            // Latin-1, a value cut mid-character) is written as U+FFFD, so every line of the
            // access log and every API answer stays readable by strict parsers.
            if (const std::size_t n = utf8_sequence(s, i); n > 0) {
                out.append(s.substr(i, n));
                i += n - 1;
            } else {
                out += "\\ufffd";
            }
            continue;
        }
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
                    static constexpr char hex[] = "0123456789abcdef";
                    out += "\\u00";
                    out += hex[(c >> 4) & 0xf];
                    out += hex[c & 0xf];
                } else {
                    out += c;
                }
        }
    }
    out += '"';
    return out;
}

std::string child(std::string_view parent, std::string_view key) {
    if (parent.empty()) {
        return std::string{key};
    }
    std::string out{parent};
    out += '.';
    out += key;
    return out;
}

std::string child(std::string_view parent, std::size_t index) {
    std::string out{parent};
    out += '[';
    out += std::to_string(index);
    out += ']';
    return out;
}

std::string_view type_name(simdjson::dom::element_type t) {
    using T = simdjson::dom::element_type;
    switch (t) {
        case T::ARRAY: return "an array";
        case T::OBJECT: return "an object";
        case T::INT64:
        case T::UINT64:
        case T::DOUBLE: return "a number";
        case T::STRING: return "a string";
        case T::BOOL: return "a boolean";
        case T::NULL_VALUE: return "null";
    }
    return "a value";
}

object_reader::object_reader(simdjson::dom::element element, std::string path, errors& errs)
    : path_(std::move(path)), errs_(errs) {
    if (element.type() != simdjson::dom::element_type::OBJECT) {
        errs_.add(path_, std::string{"must be an object, not "} + std::string{type_name(element.type())});
        return;
    }
    object_ = element.get_object().value_unsafe();
    is_object_ = true;
    // A key given twice is read as its first copy here and as its last by other readers
    // (and by anyone comparing two configs section by section): refused, not guessed.
    std::set<std::string_view> keys;
    for (auto field : object_) {
        if (!keys.insert(field.key).second) {
            errs_.add(path_of(field.key), "is given twice");
        }
    }
}

bool object_reader::has(std::string_view key) {
    if (!is_object_) {
        return false;
    }
    simdjson::dom::element e;
    return object_.at_key(key).get(e) == simdjson::SUCCESS;
}

std::optional<simdjson::dom::element> object_reader::lookup(std::string_view key, bool required) {
    if (!is_object_) {
        return std::nullopt;
    }
    seen_.emplace(key);
    simdjson::dom::element e;
    if (object_.at_key(key).get(e) != simdjson::SUCCESS) {
        if (required) {
            errs_.add(path_of(key), "is required");
        }
        return std::nullopt;
    }
    return e;
}

std::optional<simdjson::dom::element> object_reader::value(std::string_view key, bool required) {
    return lookup(key, required);
}

std::optional<std::string> object_reader::string(std::string_view key, bool required) {
    auto e = lookup(key, required);
    if (!e) {
        return std::nullopt;
    }
    std::string_view s;
    if (e->get(s) != simdjson::SUCCESS) {
        errs_.add(path_of(key), std::string{"must be a string, not "} + std::string{type_name(e->type())});
        return std::nullopt;
    }
    return std::string{s};
}

std::optional<std::int64_t> object_reader::integer(std::string_view key, bool required, std::int64_t min,
                                                   std::int64_t max) {
    auto e = lookup(key, required);
    if (!e) {
        return std::nullopt;
    }
    std::int64_t v = 0;
    if (e->get(v) != simdjson::SUCCESS) {
        double d = 0;
        if (e->get(d) == simdjson::SUCCESS && std::floor(d) == d && std::fabs(d) < 9e15) {
            v = static_cast<std::int64_t>(d);
        } else {
            errs_.add(path_of(key), std::string{"must be a whole number, not "} + std::string{type_name(e->type())});
            return std::nullopt;
        }
    }
    if (v < min || v > max) {
        std::string msg = std::to_string(v) + " is out of range";
        if (min != INT64_MIN && max != INT64_MAX) {
            msg += " (" + std::to_string(min) + " to " + std::to_string(max) + ")";
        } else if (min != INT64_MIN) {
            msg += " (at least " + std::to_string(min) + ")";
        } else {
            msg += " (at most " + std::to_string(max) + ")";
        }
        errs_.add(path_of(key), std::move(msg));
        return std::nullopt;
    }
    return v;
}

std::optional<double> object_reader::number(std::string_view key, bool required, double min, double max) {
    auto e = lookup(key, required);
    if (!e) {
        return std::nullopt;
    }
    double v = 0;
    if (e->get(v) != simdjson::SUCCESS) {
        errs_.add(path_of(key), std::string{"must be a number, not "} + std::string{type_name(e->type())});
        return std::nullopt;
    }
    if (!(v >= min && v <= max)) {
        errs_.add(path_of(key), "is out of range");
        return std::nullopt;
    }
    return v;
}

std::optional<bool> object_reader::boolean(std::string_view key, bool required) {
    auto e = lookup(key, required);
    if (!e) {
        return std::nullopt;
    }
    bool v = false;
    if (e->get(v) != simdjson::SUCCESS) {
        errs_.add(path_of(key), std::string{"must be true or false, not "} + std::string{type_name(e->type())});
        return std::nullopt;
    }
    return v;
}

std::optional<std::chrono::milliseconds> object_reader::duration(std::string_view key, bool required,
                                                                std::chrono::milliseconds min,
                                                                std::chrono::milliseconds max) {
    auto e = lookup(key, required);
    if (!e) {
        return std::nullopt;
    }
    std::string_view s;
    if (e->get(s) != simdjson::SUCCESS) {
        errs_.add(path_of(key), std::string{"must be a duration string such as \"30s\", not "} +
                                    std::string{type_name(e->type())});
        return std::nullopt;
    }
    auto d = parse_duration(s);
    if (!d) {
        errs_.add(path_of(key), quote(s) + " is not a duration (use a whole number with ms, s, m, h or d)");
        return std::nullopt;
    }
    if (*d < min) {
        errs_.add(path_of(key), quote(s) + " is too short (at least " + format_duration(min) + ")");
        return std::nullopt;
    }
    if (*d > max) {
        // (A version stored before the bound keeps running, at the bound: the clock
        // arithmetic stays in range.)
        errs_.add_since_stored(path_of(key), quote(s) + " is too long (at most " + format_duration(max) + ")");
        return max;
    }
    return d;
}

std::optional<simdjson::dom::array> object_reader::array(std::string_view key, bool required) {
    auto e = lookup(key, required);
    if (!e) {
        return std::nullopt;
    }
    simdjson::dom::array a;
    if (e->get(a) != simdjson::SUCCESS) {
        errs_.add(path_of(key), std::string{"must be an array, not "} + std::string{type_name(e->type())});
        return std::nullopt;
    }
    return a;
}

std::optional<simdjson::dom::element> object_reader::object(std::string_view key, bool required) {
    auto e = lookup(key, required);
    if (!e) {
        return std::nullopt;
    }
    if (e->type() != simdjson::dom::element_type::OBJECT) {
        errs_.add(path_of(key), std::string{"must be an object, not "} + std::string{type_name(e->type())});
        return std::nullopt;
    }
    return e;
}

std::optional<std::vector<std::string>> object_reader::strings(std::string_view key, bool required) {
    auto a = array(key, required);
    if (!a) {
        return std::nullopt;
    }
    // An item that is not a string is an error, and stands in the list as its JSON text, so
    // the caller still checks the other items at their own indexes: every error is listed,
    // not only the type error (`["GET", 5, "BAD METHOD"]` names items 1 and 2). The config
    // is refused either way.
    std::vector<std::string> out;
    std::size_t i = 0;
    for (auto item : *a) {
        std::string_view s;
        if (item.get(s) != simdjson::SUCCESS) {
            errs_.add_type_error(child(path_of(key), i),
                                 std::string{"must be a string, not "} + std::string{type_name(item.type())});
            out.emplace_back(simdjson::minify(item));
        } else {
            out.emplace_back(s);
        }
        ++i;
    }
    return out;
}

void object_reader::finish() {
    if (!is_object_) {
        return;
    }
    for (auto field : object_) {
        if (seen_.find(field.key) == seen_.end()) {
            errs_.add(path_of(field.key), "is not a known setting");
        }
    }
}

}  // namespace bb::cfg
