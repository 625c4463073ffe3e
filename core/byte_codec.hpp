#pragma once
// Fixed-size values in and out of a byte string, in the host's (little-endian) byte order:
// the saved rule meters and duplicates tables (rules/meter.cpp, rules/guardrails.cpp).
// Doubles go through bit for bit (a cap at 10,000.0 is not one at 9,999.999).

#include <bit>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

namespace bb {

static_assert(std::endian::native == std::endian::little, "saved state is written in the host's byte order");

template <class T>
void put_bytes(std::string& out, T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out.append(b, sizeof(T));
}

// Reads from the front of `in`; once a read runs past the end, ok is false and every
// later read gives T{}.
struct byte_reader {
    std::string_view in;
    bool ok = true;

    template <class T>
    T get() {
        static_assert(std::is_trivially_copyable_v<T>);
        T v{};
        if (!ok || in.size() < sizeof(T)) {
            ok = false;
            return v;
        }
        std::memcpy(&v, in.data(), sizeof(T));
        in.remove_prefix(sizeof(T));
        return v;
    }
    std::string_view bytes(std::size_t n) {
        if (!ok || in.size() < n) {
            ok = false;
            return {};
        }
        const auto b = in.substr(0, n);
        in.remove_prefix(n);
        return b;
    }
};

}  // namespace bb
