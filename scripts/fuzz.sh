#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer into build-fuzz/, and runs each for SECONDS_EACH (default 60)
# from the seed inputs in fuzz/corpus/<target>/. New inputs go to build-fuzz/corpus/<target>/
# (kept between runs, never committed); a finding is written as build-fuzz/crash-* and stops
# the run with a non-zero status. Add a finding to fuzz/corpus/<target>/ (CTest replays it
# there) and a test in tests/ before fixing it.
#
#   scripts/fuzz.sh                            # every target, 60 s each
#   SECONDS_EACH=600 scripts/fuzz.sh fuzz_rules
#
# Not part of scripts/test.sh: a fuzz run needs minutes to hours to find anything, and on
# CI's two cores a second, sanitized build of the rules alone takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh clang libclang-rt-14-dev  # the build's packages, and libFuzzer's
targets=("$@")
((${#targets[@]})) || targets=(fuzz_rules fuzz_proxy_input fuzz_config)
# (-fsanitize=fuzzer-no-link, libFuzzer's coverage, comes with BREAKERBOX_FUZZ itself.)
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# Configured every time (cheap), so a half-made or hand-made build-fuzz/ gets these settings.
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DBREAKERBOX_FUZZ=ON -DBREAKERBOX_TESTS=OFF -DBREAKERBOX_BENCH=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build build-fuzz -j "${JOBS:-$(nproc)}" --target "${targets[@]}"
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  seeds=(); [[ -d fuzz/corpus/$t ]] && seeds=("fuzz/corpus/$t")
  echo "== $t: ${SECONDS_EACH:-60} s"
  (cd build-fuzz && UBSAN_OPTIONS=print_stacktrace=1 "./fuzz/$t" -max_total_time="${SECONDS_EACH:-60}" \
    -artifact_prefix="$PWD/" \
    -max_len=65536 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 -print_funcs=0 "corpus/$t" "${seeds[@]/#/../}")
done
