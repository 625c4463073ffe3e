#pragma once
// The allocator behind every request and response header of the data plane (Beast's
// basic_fields allocates one block per field and one for the target).
//
// Why not std::allocator: a worker with 64 connections in flight holds a few hundred field
// blocks of a dozen sizes at once and frees them in bursts. glibc keeps only 7 free blocks
// per size in its per-thread cache, so most of a burst went through malloc's slow path
// (_int_malloc/_int_free were ~5% of a worker's CPU under wrk). This keeps up to 512 free
// blocks per 64-byte size class per thread. A block may be freed on another thread than
// the one that allocated it (it then joins that thread's lists); every block is a plain
// ::operator new block, so whatever a cache does not keep goes back with ::operator delete.

#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>

namespace bb::proxy {

namespace detail {

struct field_block_cache {
    static constexpr std::size_t granule = 64;
    static constexpr std::size_t classes = 8;  // blocks up to 512 bytes
    static constexpr std::uint32_t max_free = 512;
    struct node {
        node* next;
    };
    node* head[classes];
    std::uint32_t count[classes];
    bool registered;  // field_block_register() ran on this thread
    bool dead;        // the thread is exiting: no more caching
};
// Trivially destructible, so it stays readable while the thread's other thread_locals are
// destroyed; field_block_reaper empties it at thread exit.
extern thread_local field_block_cache field_blocks;

void* field_block_allocate_slow(std::size_t bytes);
void field_block_register() noexcept;  // the thread's lists are emptied when it exits
void field_block_release_all() noexcept;

inline void* field_block_allocate(std::size_t bytes) {
    if (bytes == 0 || bytes > field_block_cache::granule * field_block_cache::classes) {
        return ::operator new(bytes);
    }
    const std::size_t c = (bytes - 1) / field_block_cache::granule;
    field_block_cache& fc = field_blocks;
    if (field_block_cache::node* n = fc.head[c]) {
        fc.head[c] = n->next;
        --fc.count[c];
        return n;
    }
    return field_block_allocate_slow(bytes);
}

inline void field_block_deallocate(void* p, std::size_t bytes) noexcept {
    if (bytes == 0 || bytes > field_block_cache::granule * field_block_cache::classes) {
        ::operator delete(p);
        return;
    }
    const std::size_t c = (bytes - 1) / field_block_cache::granule;
    field_block_cache& fc = field_blocks;
    if (fc.dead || fc.count[c] >= field_block_cache::max_free) {
        ::operator delete(p);
        return;
    }
    if (!fc.registered) {  // a thread that frees blocks it never allocated
        field_block_register();
    }
    auto* n = static_cast<field_block_cache::node*>(p);
    n->next = fc.head[c];
    fc.head[c] = n;
    ++fc.count[c];
}

}  // namespace detail

template <class T>
struct field_allocator {
    using value_type = T;
    using is_always_equal = std::true_type;
    using propagate_on_container_copy_assignment = std::true_type;
    using propagate_on_container_move_assignment = std::true_type;
    using propagate_on_container_swap = std::true_type;

    field_allocator() noexcept = default;
    template <class U>
    field_allocator(const field_allocator<U>&) noexcept {}  // NOLINT(google-explicit-constructor)

    T* allocate(std::size_t n) {
        static_assert(alignof(T) <= alignof(std::max_align_t));
        if (n > static_cast<std::size_t>(-1) / sizeof(T)) {
            throw std::bad_array_new_length{};
        }
        return static_cast<T*>(detail::field_block_allocate(n * sizeof(T)));
    }
    void deallocate(T* p, std::size_t n) noexcept { detail::field_block_deallocate(p, n * sizeof(T)); }

    template <class U>
    friend bool operator==(const field_allocator&, const field_allocator<U>&) noexcept {
        return true;
    }
};

}  // namespace bb::proxy
