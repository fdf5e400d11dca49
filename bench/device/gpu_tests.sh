#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root: the test binary that
# bench/device/pack.sh laid out in .device/, against .device/fixtures.
#   bench/device/gpu_tests.sh [GTEST_FILTER]
set -uo pipefail
. bench/device/common.sh
export FASTDEMUCS_FIXTURES=$PWD/.device/fixtures
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
.device/bin/fastdemucs_tests --gtest_filter="${1:-*Cuda*}" 2>&1 | tee "$out/gpu_tests.log" |
  grep -E '^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|Failure|Expected|actual|Which is|error|snr' | head -150
exit "${PIPESTATUS[0]}"
