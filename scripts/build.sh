#!/usr/bin/env bash
# Configures and builds breakerbox with CMake + Ninja into build/ (Release unless BUILD_TYPE
# says otherwise). Extra arguments are passed to `cmake --build` (e.g. --target breakerbox).
# Configuring again each time is cheap and keeps the tests on in a build/ configured before
# with them off (test.sh would otherwise run zero tests).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc)}
args=(-S . -B build -DBREAKERBOX_TESTS=ON)
if [[ ! -f build/CMakeCache.txt ]]; then
  args+=(-G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}")
elif [[ -n ${BUILD_TYPE:-} ]]; then
  args+=(-DCMAKE_BUILD_TYPE="$BUILD_TYPE")
fi
cmake "${args[@]}" >/dev/null
cmake --build build -j "$jobs" "$@"
