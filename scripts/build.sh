#!/usr/bin/env bash
# Configures (once) and builds breakerbox with CMake + Ninja into build/ (Release).
# Extra arguments are passed to `cmake --build` (e.g. --target breakerbox).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc)}
if [[ ! -f build/build.ninja ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release}
fi
cmake --build build -j "$jobs" "$@"
