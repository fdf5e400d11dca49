#!/usr/bin/env bash
# Runs ON the GPU machine over `bench/device/pack.sh full6s DEMUCS_ROOT`'s
# .device/: where the time of a forward goes, for the kernel work.
#   $OUT/blocks.log  FASTDEMUCS_PROFILE=1 per-block tables (gemm / attention / fft / other)
#   $OUT/ncu_<precision>.csv  every kernel of one batched forward with its duration (ncu)
#   $OUT/bench.log   fastdemucs model time per precision (no official baseline) and
#                    the command end to end with its phase timings
# PROFILE_PRECISIONS (default fp16,fp32) picks the precisions; PROFILE_AB the A/B variants.
set -uo pipefail
out=${OUT:-/tmp/prof}
mkdir -p "$out"
. bench/device/common.sh
mkdir -p "$work/ab"
precisions=${PROFILE_PRECISIONS:-fp16,fp32}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/bench.log"
python3 bench/official_baseline.py --demucs-root .device/py --checkpoint "$ckpt" --seconds 180 --runs 1 \
  --out "$work" --modes reference --shifts 0 >> "$out/bench.log" 2>&1
FASTDEMUCS_PROFILE=1 GPU_BENCH_PRECISIONS=$precisions .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work" 1 \
  > /dev/null 2> "$out/blocks.log"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for p in ${precisions//,/ }; do
  [ -n "$ncu" ] || break
  GPU_BENCH_NCU=1 GPU_BENCH_PRECISIONS=$p FASTDEMUCS_NO_GRAPH=1 timeout 240 "$ncu" --clock-control none \
    --profile-from-start off --metrics gpu__time_duration.sum --csv \
    .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work" 1 > "$out/ncu_$p.csv" 2> "$out/ncu_$p.err"
done
GPU_BENCH_PRECISIONS=${BENCH_PRECISIONS:-fp32,fp16,bf16} .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work" 5 >> "$out/bench.log" 2>&1
# A/B: variants selected by environment (PROFILE_AB="NAME=VALUE ..."), fp32 and fp16 model time.
for ab in ${PROFILE_AB:-}; do
  echo "== $ab" >> "$out/bench.log"
  env "$ab" GPU_BENCH_PRECISIONS=fp32,fp16 .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work/ab" 3 >> "$out/bench.log" 2>&1
done
python3 bench/compare_stems.py "$work/reference.npy" "$work"/stems_*.npy >> "$out/bench.log" 2>&1
for run in 1 2; do
  rm -rf "$work/sep"
  start=$EPOCHREALTIME
  .device/bin/fastdemucs -v --repo "$fx" -n full6s -d cuda -o "$work/sep" "$work/track.wav" > "$work/cli.log" 2>&1
  echo "{\"mode\": \"command_fp16\", \"run\": $run, \"seconds\": $(seconds_since "$start")}" >> "$out/bench.log"
  grep -E "model ready|, separate " "$work/cli.log" >> "$out/bench.log"
done
cat "$out/bench.log"
grep -A60 "per chunk" "$out/blocks.log" | tail -62
