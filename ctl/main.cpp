// breakerctl: the operator CLI over breakerbox's admin API (docs/admin-api.md).
#include "ctl/commands.hpp"

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    bb::ctl::environment env;
    if (const char* a = std::getenv("BREAKERBOX_ADMIN"); a != nullptr && *a != '\0') {
        env.admin = a;
    }
    if (const char* t = std::getenv("BREAKERBOX_TOKEN"); t != nullptr && *t != '\0') {
        env.token = t;
    }
    try {
        return bb::ctl::run(args, env, std::cout, std::cerr);
    } catch (const std::exception& e) {
        std::cerr << "breakerctl: " << e.what() << "\n";
        return bb::ctl::exit_failed;
    }
}
