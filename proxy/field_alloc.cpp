#include "proxy/field_alloc.hpp"

namespace bb::proxy::detail {

thread_local field_block_cache field_blocks{};

namespace {

// Empties the thread's lists when the thread exits. A thread_local with a destructor is
// only constructed in a thread that touches it: field_block_register() does.
struct field_block_reaper {
    bool touched = false;
    ~field_block_reaper() { field_block_release_all(); }
};
thread_local field_block_reaper reaper;

}  // namespace

void field_block_register() noexcept {
    reaper.touched = true;
    field_blocks.registered = true;
}

void* field_block_allocate_slow(std::size_t bytes) {
    const std::size_t c = (bytes - 1) / field_block_cache::granule;
    // A whole class, so a freed block serves any size of its class.
    return ::operator new((c + 1) * field_block_cache::granule);
}

void field_block_release_all() noexcept {
    field_block_cache& fc = field_blocks;
    fc.dead = true;
    for (std::size_t c = 0; c < field_block_cache::classes; ++c) {
        while (field_block_cache::node* n = fc.head[c]) {
            fc.head[c] = n->next;
            ::operator delete(n);
        }
        fc.count[c] = 0;
    }
}

}  // namespace bb::proxy::detail
