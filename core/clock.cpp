#include "core/clock.hpp"

#include <fstream>

namespace bb {

std::string real_clock::boot_id() const {
    // Read once: it cannot change while the process lives. Without /proc (another OS, a
    // sandbox) it is empty and saved times are linked to now by the wall clock alone.
    static const std::string id = [] {
        std::ifstream in{"/proc/sys/kernel/random/boot_id"};
        std::string s;
        std::getline(in, s);
        return s.size() == 36 ? s : std::string{};
    }();
    return id;
}

}  // namespace bb
