#!/usr/bin/env bash
# Runs ON the GPU machine over `bench/device/pack.sh full6s`'s .device/: where
# the command's wall time goes, process start to exit. For each run, the
# FASTDEMUCS_TRACE=1 time line (seconds since the process started) and the
# wall time measured outside; plus the dynamic loader's own statistics.
# Output: $OUT/startup.log. STARTUP_RUNS (default 3), STARTUP_ARGS (extra options),
# STARTUP_AB="NAME=VALUE ..." environment variants, interleaved within each run
# (default: the defaults alone).
set -uo pipefail
out=${OUT:-/tmp/startup}
mkdir -p "$out"
log=$out/startup.log
. bench/device/common.sh
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  [ -f "$work/track.wav" ] || python3 bench/official_baseline.py --demucs-root .device/py --checkpoint "$ckpt" \
    --seconds 180 --out "$work" --modes "" > /dev/null
  for run in 1 2 3; do
    start=$EPOCHREALTIME
    .device/bin/fastdemucs --help > /dev/null
    echo "{\"mode\": \"help\", \"seconds\": $(seconds_since "$start")}"
  done
  .device/bin/io_bench "$work" 5
  LD_DEBUG=statistics .device/bin/fastdemucs --help 2>&1 >/dev/null | grep -E "total startup|relocation|load" | head -8
  for run in $(seq "${STARTUP_RUNS:-3}"); do
    for ab in ${STARTUP_AB:-FASTDEMUCS_AB=default}; do
      rm -rf "$work/sep"
      start=$EPOCHREALTIME
      env "$ab" FASTDEMUCS_TRACE=1 .device/bin/fastdemucs -v --repo "$fx" -n full6s -d cuda ${STARTUP_ARGS:-} \
        -o "$work/sep" "$work/track.wav" > "$work/cli.log" 2>&1
      took=$(seconds_since "$start")
      grep -E "trace:|model ready|read .* separate" "$work/cli.log"
      echo "{\"mode\": \"command\", \"variant\": \"$ab\", \"run\": $run, \"seconds\": $took, \"files\": $(ls "$work/sep/full6s/track" | wc -l)}"
    done
  done
} 2>&1 | tee "$log"
