#!/usr/bin/env bash
# Builds the project and its tests with GCC's sanitizers in a build folder of its own and
# runs CTest there:
#
#   scripts/sanitize.sh              # AddressSanitizer + UndefinedBehaviorSanitizer, every test (build-asan/)
#   scripts/sanitize.sh thread       # ThreadSanitizer (build-tsan/): every test but the DNS
#                                    # resolver's and the fuzz corpus replays; the process
#                                    # tests run the breakerbox binary built with it
#
# Not part of scripts/test.sh: on a 2-core machine each build takes 30 minutes or more (the
# tests then run in about 2). GCC warns that ThreadSanitizer does not model the fences in
# Asio's handlers (-Wtsan); no report has come from them so far. A sanitizer report fails the test it happens in
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
    targets=(--target breakerbox breakerctl test_rules test_breakers test_store test_store_db test_alerts
             test_config test_ctl test_proxy_unit test_proxy_integration test_quarantine_integration
             test_breakers_integration test_admin_integration test_agents_integration test_tls_integration
             test_process)
    tests=(-E "_NOT_BUILT\$|^fuzz_corpus\.|^dns\.")  # the tests of the binaries built
    ;;
  *) echo "usage: $0 [address|thread]" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBREAKERBOX_BENCH=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$link" >/dev/null
cmake --build "$dir" -j "${JOBS:-$(nproc)}" "${targets[@]}"
cd "$dir"
UBSAN_OPTIONS=print_stacktrace=1 \
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/../scripts/tsan.supp" \
  ctest -j "${JOBS:-$(nproc)}" --timeout 600 --output-on-failure "${tests[@]}"
