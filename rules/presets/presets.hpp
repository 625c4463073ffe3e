#pragma once
// Presets for the real APIs breakerbox fronts: a rule that says `"preset": "sendgrid.recipients"`
// gets the preset's request match (methods + path template) and measure, unless it sets
// its own. See rules/presets/README.md for the list and the syntax.
//
// The table is a compile-time constant; reading it is thread-safe.

#include <span>
#include <string_view>

namespace bb::rules {

struct preset {
    std::string_view name;         // "sendgrid.recipients"
    std::string_view methods;      // comma separated: "POST" or "POST,PATCH"
    std::string_view path;         // path template: "/crm/v3/objects/{object}/batch/{op:create|update|archive|upsert}"
    std::string_view measure;      // expression, aggregated with "sum" unless the rule says otherwise
    std::string_view description;  // what it counts, for `--check-config` messages and docs
};

std::span<const preset> presets();
const preset* find_preset(std::string_view name);

}  // namespace bb::rules
