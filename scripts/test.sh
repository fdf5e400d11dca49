#!/usr/bin/env bash
# Installs the build dependencies, builds once, runs the whole test suite.
# Fixtures are read from ../shared/fixtures (override: FASTDEMUCS_FIXTURES).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
ctest --test-dir build --output-on-failure -j 1
