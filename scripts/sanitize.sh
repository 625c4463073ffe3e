#!/usr/bin/env bash
# Builds the project and its tests with GCC's sanitizers in a build folder of its own and
# runs CTest there:
#
#   scripts/sanitize.sh              # AddressSanitizer + UndefinedBehaviorSanitizer, every test (build-asan/)
#   scripts/sanitize.sh thread       # ThreadSanitizer (build-tsan/), the tests of the libraries
#                                    # that share state between threads without Asio: rules,
#                                    # breakers, the store database, alerts
#
# Not part of scripts/test.sh: on a 2-core machine the address build alone takes about 35
# minutes (its tests then run in under 2). A sanitizer report fails the test it happens in
# (UBSan does not recover; LeakSanitizer fails a test process that leaks at exit).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
kind=${1:-address}
case $kind in
  address)
    dir=build-asan
    flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    link="-fsanitize=address,undefined"
    targets=()
    tests=()
    ;;
  thread)
    dir=build-tsan
    flags="-fsanitize=thread -fno-omit-frame-pointer"
    link="-fsanitize=thread"
    targets=(--target test_rules test_breakers test_store_db test_alerts)
    tests=(-E "_NOT_BUILT\$|^fuzz_corpus\.|^dns\.")  # the tests of the binaries built
    ;;
  *) echo "usage: $0 [address|thread]" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBREAKERBOX_BENCH=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$link" >/dev/null
cmake --build "$dir" -j "${JOBS:-$(nproc)}" "${targets[@]}"
cd "$dir"
UBSAN_OPTIONS=print_stacktrace=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  ctest -j "${JOBS:-$(nproc)}" --timeout 600 --output-on-failure "${tests[@]}"
