// libFuzzer target: the config parser (config/config.hpp), which reads a file at start and a
// reload, and the JSON an operator sends the admin API to propose a change. It must answer
// every input with a config or a list of errors: never crash, throw or leak. A config that
// parses is parsed again as a stored version (what a restart reads back), which must not
// reject what was accepted.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "config/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text{reinterpret_cast<const char*>(data), size};
    const auto parsed = bb::parse_config(text);
    if (parsed.errors.empty() != static_cast<bool>(parsed.cfg)) {
        std::fprintf(stderr, "fuzz_config: a config with errors, or none without\n");
        std::abort();
    }
    if (parsed.cfg) {
        const auto stored = bb::parse_config(text, true);
        if (!stored.cfg) {
            std::fprintf(stderr, "fuzz_config: accepted, then refused as a stored version:\n%s\n",
                         stored.errors.to_string().c_str());
            std::abort();
        }
    }
    return 0;
}
